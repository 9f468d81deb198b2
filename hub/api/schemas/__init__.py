"""JSON shapes of the hub API, shared by the server and the CLI; no storage imports."""
