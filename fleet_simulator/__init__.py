"""The fleet simulator: N virtual devices in one process that speak the agent's wire contract."""
