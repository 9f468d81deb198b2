"""slow: passthrough's values after sleeping DELAY_MS (default 10) per event: a handler of known capacity.

Its throughput is about 1000 / DELAY_MS events/s, whatever the host, so that tests can overload it (or scale
it) by a known factor. Values: a number payload gives {"value": x}; an object gives its numeric top-level
fields. The SDK replies to a chunk of events in one write, so the agent's first reply to a batch comes after
batch_size x DELAY_MS: keep the handler spec's event_timeout above that.
"""

from __future__ import annotations

import os
import time
from typing import Any

from edge_handler import Event, run

DELAY = float(os.environ.get("DELAY_MS", "10")) / 1000.0


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def handle(event: Event) -> dict[str, Any]:
    if DELAY > 0:
        time.sleep(DELAY)
    payload = event.payload
    if _numeric(payload):
        return {"value": payload}
    if isinstance(payload, dict):
        return {key: value for key, value in payload.items() if _numeric(value)}
    return {}


if __name__ == "__main__":
    run(handle)
