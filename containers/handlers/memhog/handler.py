"""memhog: allocates memory when an event asks for it, to test a handler killed for memory.

An event ``{"alloc_mb": N}`` makes it allocate N MiB and write to every page of it (so the memory is really
used, not just reserved), then answer ``{"allocated_mb": N}`` and let it go. Past the container's memory
limit the kernel's OOM killer ends it first, and the agent must dead-letter that event as ``handler-oom``.
Any other event is answered with its payload's numbers (``{"v": 3}`` -> ``{"v": 3}``), as passthrough does.
"""

from __future__ import annotations

from typing import Any

from edge_handler import Event, run

PAGE = 4096


def handle(event: Event) -> dict[str, Any]:
    payload = event.payload if isinstance(event.payload, dict) else {}
    mb = payload.get("alloc_mb")
    if isinstance(mb, int) and mb > 0:
        block = bytearray(mb << 20)
        block[::PAGE] = b"\x01" * len(range(0, len(block), PAGE))  # touch every page
        del block
        return {"allocated_mb": mb}
    return {k: v for k, v in payload.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


if __name__ == "__main__":
    run(handle)
