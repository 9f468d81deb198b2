"""The rollout controller: a loop in ``hub serve`` that moves every running rollout along, about once a second.

Each tick, per running rollout: read a snapshot (the rollout, its devices' progress, what its current step's
devices report), decide with :func:`hub.rollouts.plan.advance`, commit with a compare-and-set. ``hub serve`` runs
the loop only on the replica holding the ``rollouts`` lease (:mod:`hub.leases`), and commits with its fence: a
replica whose snapshot is stale, or whose lease was taken over meanwhile, writes nothing, so transitions are
idempotent and a step is never advanced twice. After the commit the devices whose assignment changed are
compiled (a new, higher desired version) and published by the usual machinery, and the version each got is
recorded, since a device passes only once it applied at least that version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from edge_protocol.clocks import STEADY_WALL
from hub import metrics
from hub.db.store import Store
from hub.desired.publisher import DesiredPublisher
from hub.errors import StoreError
from hub.leases import LeaseLost
from hub.rollouts.changes import RolloutChanges
from hub.rollouts.plan import RolloutView, Transition, advance
from hub.rollouts.store import RolloutStore

log = logging.getLogger(__name__)

TICK_EVERY = 1.0


class RolloutController:
    """``run()`` ticks until cancelled; tests call :meth:`tick` (or :meth:`prepare` and :meth:`commit`)."""

    def __init__(
        self,
        store: Store,
        publisher: DesiredPublisher,
        *,
        clock: Callable[[], float] = STEADY_WALL.now,
        interval: float = TICK_EVERY,
        fence: Callable[[Session], None] | None = None,
    ) -> None:
        self.rollouts = RolloutStore(store, clock=clock)
        self.changes = RolloutChanges(self.rollouts)
        self._publisher = publisher
        self._clock = clock
        self._interval = interval
        self._fence = fence

    async def run(self) -> None:
        while True:
            try:
                metrics.ROLLOUT_TICKS.inc()
                await self.tick()
            except StoreError as exc:
                metrics.FAILURES.labels("rollout").inc()
                log.warning("rollout controller: %s (next tick in %.0fs)", exc, self._interval)
            await asyncio.sleep(self._interval)

    async def tick(self) -> int:
        """One pass over the running rollouts; how many transitions this replica committed."""
        await self.compile_pending()
        committed = 0
        for rollout_id in await asyncio.to_thread(self.rollouts.running):
            decided = await self.prepare(rollout_id)
            if decided is not None and await self.commit(*decided):
                committed += 1
        await self.compile_pending()
        return committed

    async def prepare(self, rollout_id: int) -> tuple[RolloutView, Transition] | None:
        """Read and decide; None when the rollout is gone or nothing changes."""
        snapshot = await asyncio.to_thread(self.rollouts.snapshot, rollout_id)
        if snapshot is None:
            return None
        view, progress, seen = snapshot
        transition = advance(view, progress, seen, self._clock())
        return None if transition is None else (view, transition)

    async def commit(self, view: RolloutView, transition: Transition) -> bool:
        """Write a decision unless the rollout changed since ``view`` was read; True when written."""
        try:
            done = await asyncio.to_thread(self.changes.commit, view, transition, fence=self._fence)
        except LeaseLost as exc:
            log.warning("rollout %d: nothing written, %s", view.id, exc)
            return False
        if not done:
            log.debug("rollout %d moved meanwhile (another replica?): tick skipped", view.id)
            return False
        if transition.state is not view.state:
            log.info("rollout %d of %s: %s%s", view.id, view.handler, transition.state.value,
                     f" ({transition.reason})" if transition.reason else "")  # fmt: skip
        elif transition.step != view.step:
            log.info("rollout %d of %s: step %d of %d", view.id, view.handler, transition.step + 1, len(view.steps))
        if transition.assign:
            log.info("rollout %d: %s assigned %s", view.id, ", ".join(transition.assign), view.image)
        return True

    async def compile_pending(self, rollout_id: int | None = None) -> None:
        """Compile the devices whose assignment changed and record the version each got."""
        pending = await asyncio.to_thread(self.rollouts.pending_compiles, rollout_id)
        if not pending:
            return
        versions = {v.device: v.version for v in await self._publisher.compile(sorted({d for _, d, _ in pending}))}
        compiled = [(r, d, seq, versions[d]) for r, d, seq in pending if d in versions]
        await asyncio.to_thread(self.rollouts.record_versions, compiled)
