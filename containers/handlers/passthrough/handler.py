"""passthrough: reports a payload's numbers unchanged, so benchmarks measure the pipeline, not the handler.

A number payload gives {"value": x}; an object gives its numeric top-level fields; anything else no values.
"""

from __future__ import annotations

from typing import Any

from edge_handler import Event, run


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def handle(event: Event) -> dict[str, Any]:
    payload = event.payload
    if _numeric(payload):
        return {"value": payload}
    if isinstance(payload, dict):
        return {key: value for key, value in payload.items() if _numeric(value)}
    return {}


if __name__ == "__main__":
    run(handle)
