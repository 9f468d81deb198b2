"""Windowed aggregation of handler results."""
