"""Applies the hub's signed desired state: verify, compare versions, apply, remember, report.

A document is refused -- reported, counted by reason, logged, and nothing changes -- when it is unsigned or
tampered with, addressed to another device, older than the one applied, or expired. The same version again
(the retained message on every reconnection) is a silent no-op; with a later expiry it is a renewal
(``edge_agent.desired_checks``). The last applied envelope is kept on disk, verified again at start, and run
while the hub or the cloud broker is away, expired or not (with the ``desired-expired`` alarm).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.desired_checks import DesiredChecks
from edge_agent.pipeline import Pipeline
from edge_protocol.desired import DesiredDocument, DesiredRefused, is_pinned, verify_signed

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)


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
    ) -> None:
        self._device = device_id
        self._key = public_key
        self._path = store_path
        self._pipeline = pipeline
        self._on_change = on_change
        self._admit_tags = admit_tags
        self._lock = asyncio.Lock()
        self.applied_version: int | None = None
        self.last_refusal: str | None = None
        self.refusals = 0
        self.checks = DesiredChecks(tolerance=clock_tolerance, require_expiry=require_expiry, alarm=alarm, clock=clock)

    async def load_stored(self) -> bool:
        """Apply the document applied before the last stop, if any; False when there is none."""
        try:
            payload = await asyncio.to_thread(self._path.read_bytes)
        except FileNotFoundError:
            return False
        try:
            # Expired or not: a device cut off from the hub keeps running its last good state (and alarms).
            document = verify_signed(payload, self._key, self._device)
        except DesiredRefused as exc:
            log.error("stored desired state %s refused (%s); waiting for the hub", self._path, exc)
            self._refuse(exc)
            return False
        async with self._lock:
            await self._pipeline.apply(document.handlers, document.subscriptions)
            self.applied_version = document.version
            expired = self.checks.run(document)
        log.info("running stored desired state version %d%s", document.version, " (EXPIRED)" if expired else "")
        self._on_change()
        return True

    async def on_message(self, payload: bytes) -> None:
        """One message from the desired topic."""
        async with self._lock:
            try:
                document = verify_signed(payload, self._key, self._device)
                verdict = self.checks.judge(document)
                if verdict == "same":
                    return
                self._admit(document)
            except DesiredRefused as exc:
                self._refuse(exc)
                return
            if verdict == "renew":
                await asyncio.to_thread(_write_atomically, self._path, payload)
                self.checks.run(document)
                log.info("desired state version %d renewed until %s", document.version, document.expires_at)
            else:
                await self._apply(document, payload)
        self._on_change()

    async def _apply(self, document: DesiredDocument, payload: bytes) -> None:
        log.info(
            "applying desired state version %d: %d handlers, %d subscriptions",
            document.version,
            len(document.handlers),
            len(document.subscriptions),
        )
        await self._pipeline.apply(document.handlers, document.subscriptions)
        await asyncio.to_thread(_write_atomically, self._path, payload)
        self.applied_version = document.version
        self.checks.run(document)

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


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
