"""Staged rollouts: the pure plan and gates, their SQL store and changes, and the controller loop."""
