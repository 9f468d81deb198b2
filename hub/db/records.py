"""What the store returns: plain records, free of SQLAlchemy, shared by the store, the API and roll-ups."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_protocol.aggregate import FieldState


@dataclass(frozen=True, slots=True)
class StoredAggregate:
    """One stored window result, as the API returns it."""

    window_id: str
    device: str
    subscription: str
    revision: str
    group: str
    window_start: float
    window_end: float
    part: int
    events: int
    fields: dict[str, FieldState]
    stats: list[str]
    stored_at: float


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the hub knows about one device."""

    id: str
    first_seen: float
    last_seen: float
    online: bool
    agent_version: str
    labels: dict[str, str] = field(default_factory=dict)
