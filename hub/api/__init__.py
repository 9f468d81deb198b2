"""The hub's HTTP API (FastAPI): the app, its routes and the JSON schemas the CLI shares."""
