"""The hub's connection to the cloud broker, and a fake of it for unit tests."""
