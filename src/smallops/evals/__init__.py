"""Eval sets run in CI with an honest regression gate."""
