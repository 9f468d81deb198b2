"""The handler protocol: UTF-8 JSON lines between the agent and a handler container's stdin/stdout.

agent -> handler: ``{"kind":"event","id":N,"topic":"...","payload":<JSON>,"ts":<float>}``, ``{"kind":"ping","id":N}``
handler -> agent: ``{"kind":"result","id":N,"values":{...},"publish":[{"topic":...,"payload":...}]}``,
``{"kind":"error","id":N,"error":"..."}``, ``{"kind":"pong","id":N}``.

The pydantic models document the protocol and validate in tests; the agent's hot path uses
:func:`encode_event` and :func:`decode_reply`, which check the same rules on plain dicts (a model per event
would cost more than the rest of the pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import Field

from edge_protocol.base import WireModel

JSONValue = Any


class EventLine(WireModel):
    kind: Literal["event"] = "event"
    id: int
    topic: str
    payload: JSONValue
    ts: float


class PingLine(WireModel):
    kind: Literal["ping"] = "ping"
    id: int


class PublishRequest(WireModel):
    topic: str = Field(min_length=1)
    payload: JSONValue
    qos: Literal[0, 1] = 0
    retain: bool = False


class ResultLine(WireModel):
    kind: Literal["result"] = "result"
    id: int
    values: dict[str, JSONValue] = Field(default_factory=dict)
    publish: list[PublishRequest] = Field(default_factory=list)


class ErrorLine(WireModel):
    kind: Literal["error"] = "error"
    id: int | None
    error: str


class PongLine(WireModel):
    kind: Literal["pong"] = "pong"
    id: int


def encode_event(event_id: int, topic: str, payload: JSONValue, ts: float) -> bytes:
    """One event line, newline included."""
    return orjson.dumps({"kind": "event", "id": event_id, "topic": topic, "payload": payload, "ts": ts}) + b"\n"


def encode_ping(ping_id: int) -> bytes:
    return b'{"kind":"ping","id":%d}\n' % ping_id


class ReplyError(ValueError):
    """A handler line that does not follow the protocol."""


@dataclass(slots=True)
class Reply:
    """A decoded handler line; ``values``/``publish`` for results, ``error`` for errors."""

    kind: Literal["result", "error", "pong"]
    id: int | None
    values: dict[str, Any]
    publish: list[PublishRequest]
    error: str


_EMPTY: dict[str, Any] = {}


def decode_reply(line: bytes) -> Reply:
    """Parse one handler output line; raise :class:`ReplyError` with the reason when it is not valid."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ReplyError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ReplyError("a reply must be a JSON object")
    kind = obj.get("kind")
    rid = obj.get("id")
    if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool)):
        raise ReplyError("'id' must be an integer")
    if kind == "result":
        if rid is None:
            raise ReplyError("a result needs an 'id'")
        values = obj.get("values", _EMPTY)
        if not isinstance(values, dict):
            raise ReplyError("'values' must be an object")
        raw_publish = obj.get("publish")
        publish: list[PublishRequest] = []
        if raw_publish is not None:
            # Checked even when falsy: {} or false is as wrong as any other non-list.
            if not isinstance(raw_publish, list):
                raise ReplyError("'publish' must be a list")
            try:
                publish = [PublishRequest.model_validate(p) for p in raw_publish]
            except ValueError as exc:
                raise ReplyError(f"bad 'publish' entry: {exc}") from None
        return Reply("result", rid, values, publish, "")
    if kind == "error":
        return Reply("error", rid, _EMPTY, [], str(obj.get("error", ""))[:1000])
    if kind == "pong":
        return Reply("pong", rid, _EMPTY, [], "")
    raise ReplyError(f"unknown kind {kind!r}")
