"""edge_handler: the stdlib-only SDK that turns one Python function into an edgefleet handler.

Usage (inside a handler image, next to this file)::

    from edge_handler import run, Publish, HandlerResult

    def handle(event):                  # event.id, event.topic (str), event.payload (JSON value), event.ts
        return {"c": 21.5}              # result values; None for none; or
        # return HandlerResult({"c": 21.5}, publish=[Publish("alerts/hot", {"c": 21.5})])

    run(handle)                         # returns (exit status 0) when the agent closes the stream

Wire protocol, one UTF-8 JSON object per line (the agent's side: edge_protocol/handler_io.py):
  agent -> handler  {"kind":"event","id":N,"topic":"...","payload":<JSON>,"ts":<float>}
                    {"kind":"ping","id":N}
  handler -> agent  {"kind":"result","id":N,"values":{...},"publish":[{"topic":"...","payload":...}]}
                    {"kind":"error","id":N,"error":"<reason>"}  {"kind":"pong","id":N}
"publish" is omitted when empty; a publish entry carries "qos" (0 or 1) and "retain" only when they differ from
the defaults (0, false). A raising `handle`, a value that is not JSON (NaN included), a line that is
not JSON or not a known kind all produce an error reply (id null when none can be read): one bad event never
stops the handler. The stream is the unix socket named by $EDGEFLEET_HANDLER_SOCKET when the agent sets it
(the default), else stdin/stdout. stderr is the handler's log; stdout belongs to the protocol in the second
case, so never print() to it.
One-time set-up (loading a model, reading env vars) simply goes at module level, before run().

The agent writes batches of hundreds of lines before it reads, so input is read in large chunks and all
replies to a chunk leave in one write.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "HandlerResult", "Publish", "run"]

_MAX_ERROR_CHARS = 500
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


@dataclass(frozen=True, slots=True)
class Event:
    """One event routed to this handler."""

    id: Any
    topic: str
    payload: Any
    ts: float


@dataclass(frozen=True, slots=True)
class Publish:
    """A message the agent publishes on the device's local broker on the handler's behalf.

    ``qos=1`` makes the agent wait for the broker's PUBACK before it acknowledges the event that caused it;
    ``retain=True`` leaves the message as the topic's last known value for later subscribers.
    """

    topic: str
    payload: Any
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """Result values plus messages to publish."""

    values: dict[str, Any] | None = None
    publish: list[Publish] = field(default_factory=list)


Handler = Callable[[Event], dict[str, Any] | HandlerResult | None]


def _error(msg_id: Any, reason: str) -> bytes:
    return (_encode({"kind": "error", "id": msg_id, "error": reason[:_MAX_ERROR_CHARS]}) + "\n").encode()


def _result(msg_id: Any, out: object) -> bytes:
    if out is None:
        values: object = {}
        publish: list[Publish] = []
    elif isinstance(out, HandlerResult):
        values, publish = out.values or {}, out.publish
    elif isinstance(out, dict):
        values, publish = out, []
    else:
        return _error(msg_id, f"handle returned {type(out).__name__}; expected dict, HandlerResult or None")
    reply: dict[str, Any] = {"kind": "result", "id": msg_id, "values": values}
    if publish:
        reply["publish"] = [_publish_entry(p) for p in publish]
    try:
        return (_encode(reply) + "\n").encode()
    except (TypeError, ValueError) as exc:
        return _error(msg_id, f"result is not JSON-serialisable: {type(exc).__name__}: {exc}")


def _publish_entry(p: Publish) -> dict[str, Any]:
    entry: dict[str, Any] = {"topic": p.topic, "payload": p.payload}
    if p.qos:
        entry["qos"] = p.qos
    if p.retain:
        entry["retain"] = True
    return entry


def _on_event(msg_id: Any, msg: dict[str, Any], handle: Handler) -> bytes:
    try:
        event = Event(msg_id, msg["topic"], msg.get("payload"), float(msg.get("ts", 0.0)))
    except (KeyError, TypeError, ValueError) as exc:
        return _error(msg_id, f"malformed event: {type(exc).__name__}: {exc}")
    try:
        out = handle(event)
    except Exception as exc:  # whatever the handler raises becomes an error reply (a dead letter)
        return _error(msg_id, f"{type(exc).__name__}: {exc}")
    return _result(msg_id, out)


def _reply(line: bytes | bytearray, handle: Handler) -> bytes:
    try:
        msg = json.loads(line)  # bytes in: invalid UTF-8 raises UnicodeDecodeError, a ValueError
    except ValueError as exc:
        return _error(None, f"invalid JSON line: {exc}")
    if not isinstance(msg, dict):
        return _error(None, f"expected a JSON object, got {type(msg).__name__}")
    kind = msg.get("kind")
    if kind == "event":
        return _on_event(msg.get("id"), msg, handle)
    if kind == "ping":
        return (_encode({"kind": "pong", "id": msg.get("id")}) + "\n").encode()
    return _error(msg.get("id"), f"unknown kind {kind!r}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run(handle: Handler, *, stdin_fd: int | None = None, stdout_fd: int | None = None) -> None:
    """Serve `handle` over the JSON-lines protocol until the agent closes the stream (EOF).

    The stream is the agent's socket when $EDGEFLEET_HANDLER_SOCKET names one and no descriptors are given,
    else `stdin_fd`/`stdout_fd` (0 and 1 by default)."""
    # In a container the handler is PID 1, which ignores SIGTERM unless a handler is installed, so
    # `docker stop` would otherwise wait out its whole grace period.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    path = os.environ.get("EDGEFLEET_HANDLER_SOCKET")
    if path and stdin_fd is None and stdout_fd is None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            _serve(handle, conn.fileno(), conn.fileno())
        return
    _serve(handle, 0 if stdin_fd is None else stdin_fd, 1 if stdout_fd is None else stdout_fd)


def _serve(handle: Handler, stdin_fd: int, stdout_fd: int) -> None:
    pending = bytearray()
    try:
        while chunk := os.read(stdin_fd, 65536):
            pending += chunk
            if b"\n" not in chunk:
                continue
            *lines, rest = pending.split(b"\n")
            pending = bytearray(rest)
            # One write per chunk is what makes fast handlers fast; a slow one flushes every 50 ms as well, so
            # the agent sees progress and its per-event timeout measures one event, not a whole batch.
            out: list[bytes] = []
            flushed = time.monotonic()
            for line in lines:
                if line.strip():
                    out.append(_reply(line, handle))
                    if time.monotonic() - flushed > 0.05:
                        _write_all(stdout_fd, b"".join(out))
                        out.clear()
                        flushed = time.monotonic()
            _write_all(stdout_fd, b"".join(out))
        if pending.strip():  # a last line without its newline still deserves an answer
            _write_all(stdout_fd, _reply(pending, handle))
    except (BrokenPipeError, ConnectionResetError):
        # The agent went away; nobody is left to read an answer or a traceback.
        sys.exit(1)
