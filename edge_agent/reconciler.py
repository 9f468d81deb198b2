"""Applies the hub's signed desired state: verify, compare versions, apply, remember, report.

A document is refused -- reported, counted by reason, logged, and nothing changes -- when it is unsigned or
tampered with, addressed to another device, older than the one applied, or expired. The same version again
(the retained message on every reconnection) is a silent no-op; with a later expiry it is a renewal
(``edge_agent.desired_checks``). The last applied envelope is kept on disk, verified again at start, and run
while the hub or the cloud broker is away, expired or not (with the ``desired-expired`` alarm).

A document is applied all-or-nothing (``Pipeline.apply``, ``edge_agent.staging``): when a new or changed handler
fails to pull, start or answer, or crash-loops during its probation, the device stays on (or goes back to) its
last good document, handlers and subscriptions, and the version is refused with the step and the reason
(``desired_refused`` in the reported state). A version refused for cause is not tried again, on its retained
re-deliveries nor after a restart; one refused for a passing reason (a registry out of reach, a disk full) is
tried again after a backoff (``edge_agent.refusals``); a newer one is tried at once. A failure to write a file
or anything unexpected in an update is refused and reported (the ``storage`` alarm for the disk), never fatal.
Three files: the last received envelope (``desired.received.json``, written when it arrives), the last good one
(``desired.json``, written once a document's probation passed -- at the switch when there is no probation or no
new handler) and the last refusal for cause (``desired.refused.json``). A start runs the good one: a crash
mid-update, or during a probation, comes back on the document that last proved itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.desired_checks import DesiredChecks
from edge_agent.pipeline import Pipeline
from edge_agent.refusals import RefusalMemory, refused_path
from edge_agent.staging import TrialEnd, UpdateRefused
from edge_protocol.desired import DesiredDocument, DesiredRefused, is_pinned, verify_signed
from edge_protocol.files import write_atomically
from edge_protocol.messages import DesiredRefusal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

STORAGE_ALARM = "storage"
"""Raised while a desired-state file cannot be written; cleared by the next write that succeeds."""

_write_atomically = write_atomically  # one name for every write of the two files (a test slows it down)


class Reconciler:
    """Turns desired-state messages into ``Pipeline.apply`` calls."""

    def __init__(
        self,
        *,
        device_id: str,
        public_key: Ed25519PublicKey,
        store_path: Path,
        pipeline: Pipeline,
        on_change: Callable[[], None],
        admit_tags: bool = False,
        clock_tolerance: float = 0.0,
        require_expiry: bool = False,
        alarm: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.time,
        retry_after: float = 30.0,
        retry_max: float = 600.0,
    ) -> None:
        self._device = device_id
        self._key = public_key
        self._path = store_path
        self._pipeline = pipeline
        self._on_change = on_change
        self._admit_tags = admit_tags
        self._lock = asyncio.Lock()
        self._store_lock = asyncio.Lock()
        """Serialises the last good file and ``good``/``on_trial`` between messages and the end of a trial; never
        held while waiting for the pipeline (whose lock ``_trial_ended`` is called under)."""
        self.applied_version: int | None = None
        self.last_refusal: str | None = None
        self.refusals = 0
        self.checks = DesiredChecks(tolerance=clock_tolerance, require_expiry=require_expiry, alarm=alarm, clock=clock)
        self._received_path = received_path(store_path)
        self.good: tuple[DesiredDocument, bytes] | None = None
        """The last good document (applied, probation passed) and its envelope: what a start runs."""
        self.on_trial: tuple[DesiredDocument, bytes] | None = None
        """The document switched to and on probation, not yet good."""
        self.memory = RefusalMemory(refused_path(store_path), retry_after=retry_after, retry_max=retry_max)
        self._alarm = alarm or (lambda _name, _on: None)
        self._storage_failing = False
        self._newest = 0
        """The newest version verified: a retry of an older one is dropped."""
        self._retry_task: asyncio.Task[None] | None = None
        pipeline.on_trial_end = self._trial_ended

    @property
    def refused(self) -> DesiredRefusal | None:
        """The last version refused (``desired_refused`` in the reported state)."""
        return self.memory.refused

    async def load_stored(self) -> bool:
        """Apply the last good document (verified again), if any; False when there is none, or it is unreadable
        or refused: the agent then runs nothing and waits for the hub."""
        await asyncio.to_thread(self.memory.load)
        try:
            payload = await asyncio.to_thread(self._path.read_bytes)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.error("stored desired state %s unreadable (%s); waiting for the hub", self._path, exc)
            await self._flush_orphans()
            return False
        try:
            # Expired or not: a device cut off from the hub keeps running its last good state (and alarms).
            document = verify_signed(payload, self._key, self._device)
        except DesiredRefused as exc:
            log.error("stored desired state %s refused (%s); waiting for the hub", self._path, exc)
            self._refuse(exc)
            await self._flush_orphans()
            return False
        async with self._lock:
            await self._pipeline.apply(document.handlers, document.subscriptions, gated=False)
            self.applied_version = document.version
            self.good = (document, payload)
            expired = self.checks.run(document)
            await self._flush_orphans()
        log.info("running stored desired state version %d%s", document.version, " (EXPIRED)" if expired else "")
        self._on_change()
        return True

    async def on_message(self, payload: bytes) -> None:
        """One message from the desired topic. Never raises (but cancellation): it runs in the uplink's receive
        loop, and a refusal, however it comes about, is reported rather than stopping the agent."""
        async with self._lock:
            try:
                document = verify_signed(payload, self._key, self._device)
                self._newest = max(self._newest, document.version)
                if self.memory.blocks(document.version):
                    return  # refused already (or its retry is not due): its re-deliveries are not tried again
                verdict = self.checks.judge(document)
                if verdict == "same":
                    return
                self._admit(document)
            except DesiredRefused as exc:
                self._refuse(exc)
                return
            if not await self._store(self._received_path, payload, document.version):
                return
            try:
                if verdict == "renew":
                    await self._renew(document, payload)
                else:
                    await self._apply(document, payload)
            except Exception as exc:  # a bug or a failing disk must not stop the agent; the current state runs on
                log.exception("desired state version %d: update failed", document.version)
                self._refuse(DesiredRefused("update-error", f"version {document.version}: {exc!r}"))
        self._on_change()

    async def _store(self, path: Path, payload: bytes, version: int, *, retry: bool = True) -> bool:
        """Write one desired-state file; on failure (disk full, read-only), raise the ``storage`` alarm, refuse
        and, for a received copy, try the version again after a backoff. True when written."""
        try:
            await asyncio.to_thread(_write_atomically, path, payload)
        except OSError as exc:
            self._storage_failing = True
            self._alarm(STORAGE_ALARM, True)
            self._refuse(DesiredRefused("storage", f"version {version}: {path.name} not written: {exc}"))
            if retry:
                self._retry_later(version, payload, self.memory.passing(version))
            return False
        if self._storage_failing:
            self._storage_failing = False
            self._alarm(STORAGE_ALARM, False)
        return True

    def _retry_later(self, version: int, payload: bytes, delay: float) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
        log.warning("desired state version %d: tried again in %.0fs", version, delay)
        self._retry_task = asyncio.get_running_loop().create_task(self._retry(version, payload, delay))

    async def _retry(self, version: int, payload: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        self._retry_task = None
        if version >= self._newest:  # a newer version came meanwhile: this one is stale
            await self.on_message(payload)

    def close(self) -> None:
        """Drop a pending retry (shutdown)."""
        if self._retry_task is not None:
            self._retry_task.cancel()
            self._retry_task = None

    async def _renew(self, document: DesiredDocument, payload: bytes) -> None:
        """A later expiry for the version that runs. Decided under the store lock, after every await: the trial
        may have ended meanwhile (``_trial_ended`` runs from the pipeline, outside ``self._lock``), and a
        reverted version must not become the last good one on disk."""
        async with self._store_lock:
            running = self.checks.running
            if running is None or running.version != document.version:
                log.info("renewal of desired state version %d dropped: that version no longer runs", document.version)
                return
            if self.on_trial is not None and self.on_trial[0].version == document.version:
                self.on_trial = (document, payload)  # written as good when its probation passes
            else:
                await self._store(self._path, payload, document.version, retry=False)
                self.good = (document, payload)
            self.checks.run(document)
        log.info("desired state version %d renewed until %s", document.version, document.expires_at)

    async def _apply(self, document: DesiredDocument, payload: bytes) -> None:
        log.info(
            "applying desired state version %d: %d handlers, %d subscriptions",
            document.version,
            len(document.handlers),
            len(document.subscriptions),
        )
        try:
            on_trial = await self._pipeline.apply(document.handlers, document.subscriptions, tag=document.version)
        except UpdateRefused as exc:
            await self._refuse_update(document.version, exc, payload)
            return
        self.applied_version = document.version
        self.checks.run(document)
        if on_trial:
            self.on_trial = (document, payload)
            log.info("desired state version %d runs on probation", document.version)
        else:
            await self._good_now(document, payload)

    async def _good_now(self, document: DesiredDocument, payload: bytes) -> None:
        async with self._store_lock:
            await self._write_good(document, payload)

    async def _write_good(self, document: DesiredDocument, payload: bytes) -> None:
        """Good in memory whatever the disk says: it runs and passed; a failed write leaves the older good file
        for the next start (and the ``storage`` alarm)."""
        await self._store(self._path, payload, document.version, retry=False)
        self.good = (document, payload)
        self.on_trial = None
        log.info("desired state version %d is the last good one", document.version)

    async def _trial_ended(self, end: TrialEnd) -> None:
        """From the pipeline (under its lock): the document on trial passed, or the whole of it was reverted."""
        async with self._store_lock:
            await self._end_trial(end)
        self._on_change()

    async def _end_trial(self, end: TrialEnd) -> None:
        trial, self.on_trial = self.on_trial, None
        envelope = trial[1] if trial is not None else b""
        if end.refusal is None:
            if trial is not None and trial[0].version == end.tag:
                await self._write_good(*trial)
        else:
            good = self.good[0] if self.good is not None else None
            self.applied_version = good.version if good is not None else None
            if good is not None:
                self.checks.run(good)
            else:
                self.checks.running = None
                self.checks.check()
            if isinstance(end.tag, int):
                await self._refuse_update(end.tag, end.refusal, envelope)

    async def _refuse_update(self, version: int, exc: UpdateRefused, envelope: bytes) -> None:
        refusal = DesiredRefusal(
            version=version, step=exc.step, handler=exc.handler, image=exc.image, reason=exc.reason
        )
        if exc.transient:
            self._retry_later(version, envelope, self.memory.passing(version, refusal))
        else:
            record = self.memory.for_cause(refusal, envelope)
            await self._store(self.memory.path, record, version, retry=False)
        self._refuse(
            DesiredRefused(
                f"update-{exc.step}", f"version {version}: handler {exc.handler} ({exc.image}): {exc.reason}"
            )
        )

    async def _flush_orphans(self) -> None:
        """Windows left open by any subscription that does not run now (a crash stopped it on trial); the last
        received document's specs help with checkpoints older than the outbox's own record of specs."""
        try:
            payload = await asyncio.to_thread(self._received_path.read_bytes)
            known = verify_signed(payload, self._key, self._device).subscriptions
        except (OSError, DesiredRefused):
            known = []
        await self._pipeline.flush_orphans(known)

    def _admit(self, document: DesiredDocument) -> None:
        """Only images named by content run: a tag could be moved to other code behind the hub's back."""
        if self._admit_tags:
            return
        for handler in document.handlers:
            if not is_pinned(handler.image):
                raise DesiredRefused(
                    "image-not-admitted", f"handler {handler.name}: {handler.image!r} is not named by digest"
                )

    def _refuse(self, exc: DesiredRefused) -> None:
        self.refusals += 1
        self.checks.count(exc.reason)
        self.last_refusal = str(exc)
        log.warning("refused desired state: %s", exc)
        self._on_change()


def received_path(store_path: Path) -> Path:
    """Where the last received envelope is kept, beside the last good one (``desired.json``)."""
    return store_path.with_name(store_path.stem + ".received" + store_path.suffix)
