"""Handler runtimes: where a handler's code runs (a Docker container; an in-process fake for unit tests)."""
