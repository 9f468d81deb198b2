"""Checkpoints no running subscription owns, emitted at start.

A subscription's open windows are checkpointed with every commit, and its events acknowledged on that strength.
When the agent stops while a revision runs that the next start does not run -- a document on trial when it
crashed (its base is what starts), a trial joined by a newer document that was never applied, a configuration
edited between two runs -- that checkpoint has no owner: :func:`flush_orphans` emits its windows and leaves only
the sealed mark (``WindowSet.seal``), so the same revision back later does not emit them again.

The spec each checkpoint needs to be emitted (window kind, stats, gap) is kept per revision in the outbox
(``Outbox.remember_specs``, written when a revision is first run); specs passed by the caller (the last received
document's) cover checkpoints written before that table existed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from edge_agent.aggregation.windows import WindowSet
from edge_agent.outbox import Outbox
from edge_protocol.specs import SubscriptionSpec

log = logging.getLogger(__name__)


def checkpoint_key(spec: SubscriptionSpec) -> str:
    """Checkpoints are per revision: a changed subscription never restores the old one's windows."""
    return f"{spec.name}@{spec.revision}"


def split_part(key: str) -> tuple[str, int]:
    """``name@revision#p1`` (an intake worker's part) -> (``name@revision``, 1); a key without a part is part 0."""
    base, sep, part = key.rpartition("#p")
    if sep and part.isdigit() and "@" in base:
        return base, int(part)
    return key, 0


def holds_windows(snapshot: dict[str, Any]) -> bool:
    return bool(snapshot.get("windows") or snapshot.get("sessions") or snapshot.get("ended"))


async def flush_orphans(outbox: Outbox, device: str, running: set[str], known: Iterable[SubscriptionSpec]) -> int:
    """Emit the open windows of every checkpoint whose key is not in ``running``; the windows emitted."""
    checkpoints = await outbox.checkpoints()
    orphans = {key: snap for key, snap in checkpoints.items() if key not in running and holds_windows(snap)}
    if not orphans:
        return 0
    specs = {checkpoint_key(s): s for s in known}
    stored = await outbox.specs()
    flushed = 0
    for key, snapshot in sorted(orphans.items()):
        base, part = split_part(key)
        spec = specs.get(base) or _spec(stored.get(base))
        if spec is None or checkpoint_key(spec) != base:
            log.error("checkpoint %s holds open windows but its subscription's spec is unknown: left as it is", key)
            continue
        windows = WindowSet(spec, device, part)
        if not windows.restore(snapshot):
            continue
        closed = windows.seal()
        await outbox.commit(closed, {key: windows.snapshot()})
        flushed += len(closed)
        log.info("checkpoint %s: %d windows no running subscription owns emitted", key, len(closed))
    return flushed


def _spec(data: dict[str, Any] | None) -> SubscriptionSpec | None:
    if data is None:
        return None
    try:
        return SubscriptionSpec.model_validate(data)
    except ValidationError:
        return None
