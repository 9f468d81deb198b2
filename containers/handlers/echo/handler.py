"""echo: passthrough's values, plus the payload published back on the device broker (for latency benchmarks).

An event on ``<a>/<b>/<rest>`` is published unchanged on ``<ECHO_PREFIX>/<rest>`` (default ``bench/out``), so
a subscriber there can time publish -> handler result -> local publish. Values: the payload's numbers.
"""

from __future__ import annotations

import os
from typing import Any

from edge_handler import Event, HandlerResult, Publish, run

PREFIX = os.environ.get("ECHO_PREFIX", "bench/out")


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def handle(event: Event) -> HandlerResult:
    payload = event.payload
    values = {k: v for k, v in payload.items() if _numeric(v)} if isinstance(payload, dict) else {}
    rest = event.topic.split("/", 2)[-1]
    return HandlerResult(values, publish=[Publish(f"{PREFIX}/{rest}", payload)])


if __name__ == "__main__":
    run(handle)
