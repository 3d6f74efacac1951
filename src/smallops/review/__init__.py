"""Humans in the loop: review policies, the queue, decisions, graduation to auto-action."""
