"""Local services the demo, the benchmark and the tests start: loopback ports, mosquitto brokers."""
