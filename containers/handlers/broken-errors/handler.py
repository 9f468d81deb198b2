"""broken-errors: a release that starts and answers pings but rejects every event (pushed as temp-c 1.2-errors).

A health check by ping alone passes; only the error replies (dead letters, reason handler-error) show it is broken.
"""

from __future__ import annotations

from typing import NoReturn

from edge_handler import Event, run


def handle(event: Event) -> NoReturn:
    raise RuntimeError(f"broken-errors: release 1.2-errors rejects every event (event {event.id})")


if __name__ == "__main__":
    run(handle)
