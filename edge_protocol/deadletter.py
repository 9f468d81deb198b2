"""The dead-letter record the agent publishes on the device broker for every event it rejects."""

from __future__ import annotations

import base64
from typing import Literal

from edge_protocol.base import WireModel

DeadLetterReason = Literal[
    "invalid-json",
    "oversized",
    "handler-error",
    "handler-invalid-reply",
    "handler-exited",
    "handler-oom",
    "handler-timeout",
    "handler-unavailable",
    "late",
    "overflow",
]


class DeadLetter(WireModel):
    """Why an event was rejected, with its payload as text when it is UTF-8, else base64."""

    kind: Literal["deadletter"] = "deadletter"
    reason: DeadLetterReason
    detail: str = ""
    subscription: str
    handler: str
    topic: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    ts: float

    @classmethod
    def of(
        cls,
        *,
        reason: DeadLetterReason,
        detail: str,
        subscription: str,
        handler: str,
        topic: str,
        payload: bytes,
        ts: float,
    ) -> DeadLetter:
        encoding: Literal["utf-8", "base64"]
        try:
            text, encoding = payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
        return cls(
            reason=reason,
            detail=detail[:1000],
            subscription=subscription,
            handler=handler,
            topic=topic,
            payload=text,
            payload_encoding=encoding,
            ts=ts,
        )

    def payload_bytes(self) -> bytes:
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8")
