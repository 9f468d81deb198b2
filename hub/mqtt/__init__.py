"""The hub's connection to the cloud broker (an mqtt_session.Session), and a fake of it for unit tests."""
