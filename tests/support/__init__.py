"""Test support: real brokers and the real Docker engine, started and stopped by the tests that use them."""
