"""The fleet registry: devices, their labels, status and reported state."""
