"""The ``hub`` command: ``hub serve`` and the commands that talk to the hub API over HTTP."""
