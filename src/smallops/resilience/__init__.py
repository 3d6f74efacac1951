"""What keeps a bad day at the provider from becoming a bad day downstream."""
