"""Publishes each device's current signed desired state, retained, QoS 1, on ``{prefix}/devices/{id}/desired``.

Changes (API, ingest) call :meth:`DesiredPublisher.changed` or :meth:`device_seen`: the compile happens at once
(in the store, so the caller learns the new versions); publishing is this loop's job. A version stays marked
unpublished until the broker acknowledged it, so a failed publish, a broker outage or a hub that died between
compile and publish is caught by the next sweep (on every change, every ``sweep_every`` s, and at start-up).

The loop always publishes a device's *newest* envelope and, once acknowledged, checks that it is still the
stored one: when another replica made a newer version meanwhile, or the renewal re-signed the version, it
publishes again, so the retained message ends on the stored envelope of the newest version whatever order two
replicas' publishes arrived in.

No republishing on reports: the retained message already reaches a device that reconnects. A renewal
(``hub.desired.renewal``) re-signs a version in place and marks it unpublished; :meth:`DesiredPublisher.wake`
gets it published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from edge_protocol.topics import Topics
from hub import metrics
from hub.db.store import Store
from hub.desired.documents import DesiredStore, DesiredVersion
from hub.errors import BrokerError, StoreError
from hub.fleet.devices import Devices
from hub.fleet.labels import Selector
from hub.mqtt.broker import MessageBus

log = logging.getLogger(__name__)

SWEEP_EVERY = 30.0
RETRY_EVERY = 2.0
MAX_CHASES = 5
"""How many times one push follows versions made meanwhile before leaving the rest to the next sweep."""


class DesiredPublisher:
    """Compile on change, publish what is unpublished; ``run()`` is the publishing loop."""

    def __init__(
        self,
        desired: DesiredStore,
        bus: MessageBus,
        topics: Topics,
        *,
        sweep_every: float = SWEEP_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.desired = desired
        self._store: Store = desired.store
        self._bus = bus
        self._topics = topics
        self._sweep_every = sweep_every
        self._clock = clock
        self._wake = asyncio.Event()
        self._known: set[str] = set()
        self._reconciled = False

    # -- triggers --------------------------------------------------------------------------------------------

    async def changed(self, devices: Iterable[str] | None = None) -> list[DesiredVersion]:
        """Recompile ``devices`` (None: all) after a change; returns the versions made by this compile."""
        return [r for r in await self.compile(devices) if r.changed]

    async def compile(self, devices: Iterable[str] | None = None) -> list[DesiredVersion]:
        """Recompile ``devices`` (None: all); every device's current version, made now or not."""
        results = await asyncio.to_thread(self.desired.recompile, None if devices is None else list(devices))
        made = [r for r in results if r.changed]
        if made:
            metrics.DESIRED_VERSIONS.inc(len(made))
            log.info("desired state: %s", ", ".join(f"{r.device} v{r.version}" for r in made))
            self._wake.set()
        return results

    async def targets_changed(self, selectors: Iterable[Selector]) -> list[DesiredVersion]:
        """Recompile the devices matching any of ``selectors`` (a subscription's old and new target)."""
        chosen = list(selectors)
        if not chosen:
            return []
        devices = await asyncio.to_thread(Devices(self._store).all)
        return await self.changed(d.id for d in devices if any(s.matches(d.labels) for s in chosen))

    async def device_seen(self, device: str) -> None:
        """A status or reported message came from ``device``: compile its first document if it has none."""
        if device in self._known:
            return
        if not await asyncio.to_thread(self.desired.has_document, device):
            await self.changed([device])
        self._known.add(device)

    def wake(self) -> None:
        """Publish what is unpublished now rather than at the next sweep (after a renewal)."""
        self._wake.set()

    # -- publishing ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Compile every known device once (idempotent), then publish whatever is unpublished, until cancelled."""
        while True:
            self._wake.clear()
            delay = self._sweep_every
            try:
                if not self._reconciled:
                    await self.changed(None)
                    self._reconciled = True
                await self._bus.wait_connected()
                await self.publish_pending()
            except (StoreError, BrokerError) as exc:
                metrics.FAILURES.labels("desired").inc()
                log.warning("desired state not published yet (retrying in %.0fs): %s", RETRY_EVERY, exc)
                delay = RETRY_EVERY
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancellation (cpython#86296).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def publish_pending(self) -> int:
        """Publish the newest version of every device whose newest version is unpublished; how many devices."""
        devices = await asyncio.to_thread(self.desired.unpublished)
        for device in devices:
            await self.push(device)
        return len(devices)

    async def push(self, device: str) -> int | None:
        """Publish ``device``'s newest envelope (again, if need be); the version published, None if it has none.

        After each acknowledged publish the stored newest version is read back: if it is another version, or the
        same version signed again (a renewal), that is published in turn, so this push's last retained publish
        is what is stored. A publisher that sent a stale envelope over a newer one (another replica's) thus
        always puts the stored one back. Each chase needs the store to change between a read and a mark (a
        compile, or a renewal, which a version gets at most once per half validity); publishers alone change
        nothing, so two of them on the same envelope both stop. After ``MAX_CHASES`` the stored version, if it
        is not what was published last, is marked unpublished again for the next sweep, never left marked
        published while the broker may retain an older envelope.
        """
        published = None
        record = await asyncio.to_thread(self.desired.current, device)
        for _ in range(MAX_CHASES):
            if record is None:
                return published
            await self._bus.publish(self._topics.desired(device), record.envelope.encode(), qos=1, retain=True)
            metrics.DESIRED_PUBLISHED.inc()
            published = record.version
            newest = await asyncio.to_thread(
                self.desired.mark_published_newest, device, record.version, self._clock(), record.envelope
            )
            if newest is None or (newest.version, newest.envelope) == (record.version, record.envelope):
                return published
            record = newest
        if record is not None:
            await asyncio.to_thread(self.desired.mark_unpublished, device, record.version, record.envelope)
            log.info("desired state of %s changed %d times while publishing: next sweep", device, MAX_CHASES)
        return published
