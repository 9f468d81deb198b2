"""Per-subscription counters: what the agent reports and the tests assert on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class SubscriptionCounters:
    received: int = 0
    processed: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    dropped_overflow: int = 0
    redelivered: int = 0
    windows_closed: int = 0
    published: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "processed": self.processed,
            "dead_lettered": dict(self.dead_lettered),
            "dropped_overflow": self.dropped_overflow,
            "redelivered": self.redelivered,
            "windows_closed": self.windows_closed,
            "published": self.published,
        }
