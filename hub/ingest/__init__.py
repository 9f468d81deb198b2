"""Ingest: aggregates, statuses and reported states from the broker into the store; aggregate queries."""
