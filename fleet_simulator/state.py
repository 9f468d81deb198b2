"""A virtual device's desired state, applied as a real agent would report it. Pure: times are passed in.

Checks, as the agent's reconciler: the signature (when the hub's public key is given), the addressee, images
named by digest (unless tags are admitted), then the version (older: refused as ``stale-version``; the same:
a no-op). An applied document's handlers run their images: healthy, running, with ``processed`` counting
from the switch (a new image is a new runtime). A handler whose image matches the ``broken`` pattern either
refuses the update (``refuse``: the old image keeps running, ``update_failed_image`` and ``update_error`` are
reported, as the agent does when a new image does not start) or runs it and fails half its events
(``errors``). A document with a refused handler still counts as applied, as on a real device.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge_protocol.desired import DesiredDocument, DesiredRefused, SignedDesired, is_pinned, verify_document
from edge_protocol.messages import HandlerReport
from fleet_simulator.messages import SimSubscription

BrokenMode = Literal["refuse", "errors"]
ERROR_SHARE = 0.5
"""Share of events a handler running a broken image fails in ``errors`` mode."""
LAG_MS = 5.0


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How virtual devices treat what they are told to run."""

    event_rate: float = 10.0
    """Events per second each running handler processes (its counters advance at this pace)."""
    broken: str | None = None
    """fnmatch pattern of images that fail (``*@sha256:dead*``); None: every image works."""
    broken_mode: BrokenMode = "refuse"
    admit_tags: bool = False
    """Run images named by tag too (the agent refuses them by default: ``image-not-admitted``)."""

    def is_broken(self, image: str) -> bool:
        return self.broken is not None and fnmatch.fnmatchcase(image, self.broken)


@dataclass(frozen=True, slots=True)
class HandlerRun:
    """One handler as the virtual device runs it."""

    name: str
    image: str
    started_at: float
    failing: bool = False
    state: Literal["running", "failed"] = "running"
    update_failed_image: str | None = None
    update_error: str | None = None

    def report(self, now: float, behaviour: Behaviour) -> HandlerReport:
        handled = int(max(0.0, now - self.started_at) * behaviour.event_rate) if self.state == "running" else 0
        errors = int(handled * ERROR_SHARE) if self.failing else 0
        return HandlerReport(
            name=self.name,
            image=self.image,
            healthy=self.state == "running",
            state=self.state,
            processed=handled - errors,
            errors=errors,
            lag_ms=LAG_MS if self.state == "running" else None,
            update_failed_image=self.update_failed_image,
            update_error=self.update_error,
        )


class DeviceState:
    """What one virtual device runs: the handlers and subscriptions of its applied desired document."""

    def __init__(self, device: str, behaviour: Behaviour, key: Ed25519PublicKey | None = None) -> None:
        self.device = device
        self.behaviour = behaviour
        self._key = key
        self.applied_version: int | None = None
        self.handlers: dict[str, HandlerRun] = {}
        self.subscriptions: list[SimSubscription] | None = None
        """None until a document is applied: the device then produces its synthetic stream."""
        self.last_refusal: str | None = None
        self.refusals = 0

    def on_desired(self, payload: bytes, now: float) -> bool:
        """Apply one message from the desired topic; True when the reported state changed."""
        if not payload:
            return False  # the hub cleared the retained message
        try:
            document = self._verify(payload)
            if not self.behaviour.admit_tags:
                for handler in document.handlers:
                    if not is_pinned(handler.image):
                        raise DesiredRefused(
                            "image-not-admitted", f"handler {handler.name}: {handler.image!r} is not named by digest"
                        )
            if self.applied_version is not None:
                if document.version == self.applied_version:
                    return False
                if document.version < self.applied_version:
                    raise DesiredRefused(
                        "stale-version", f"version {document.version} < applied {self.applied_version}"
                    )
        except DesiredRefused as exc:
            self.refusals += 1
            self.last_refusal = str(exc)
            return True
        self._apply(document, now)
        return True

    def _verify(self, payload: bytes) -> DesiredDocument:
        if self._key is not None:
            return verify_document(payload, self._key, self.device)
        # Without the hub's key the simulator trusts the broker (an operator trying the hub out).
        try:
            document = DesiredDocument.model_validate_json(SignedDesired.model_validate_json(payload).document)
        except ValidationError as exc:
            raise DesiredRefused("malformed", str(exc.errors()[0]["msg"])) from None
        if document.device != self.device:
            raise DesiredRefused("wrong-device", f"addressed to {document.device!r}, not {self.device!r}")
        return document

    def _apply(self, document: DesiredDocument, now: float) -> None:
        runs: dict[str, HandlerRun] = {}
        for spec in document.handlers:
            old = self.handlers.get(spec.name)
            if old is not None and old.image == spec.image:
                runs[spec.name] = old
            elif self.behaviour.is_broken(spec.image) and self.behaviour.broken_mode == "refuse":
                why = f"{spec.image}: simulated start failure (--broken-image)"
                if old is not None and old.state == "running":
                    runs[spec.name] = replace(old, update_failed_image=spec.image, update_error=why)
                else:
                    runs[spec.name] = HandlerRun(spec.name, spec.image, now, state="failed",
                                                 update_failed_image=spec.image, update_error=why)  # fmt: skip
            else:
                runs[spec.name] = HandlerRun(spec.name, spec.image, now, failing=self.behaviour.is_broken(spec.image))
        self.handlers = runs
        self.subscriptions = [SimSubscription.of(sub) for sub in document.subscriptions]
        self.applied_version = document.version

    def handler_reports(self, now: float) -> list[HandlerReport]:
        return [run.report(now, self.behaviour) for _, run in sorted(self.handlers.items())]
