"""The pipe between the agent and one intake worker: newline-delimited JSON objects, both ways.

orjson never writes a raw newline inside a document, so a line is a message. Lines are bounded by
``LINE_LIMIT`` (a commit of many windows with quantile sketches is the largest message).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import orjson

from edge_agent.config import LocalBrokerConfig, RuntimeConfig
from edge_agent.errors import OutboxError
from edge_protocol.base import WireModel
from edge_protocol.specs import HandlerSpec, SubscriptionSpec

LINE_LIMIT = 64 * 1024 * 1024


class Assignment(WireModel):
    """What one worker runs: the agent's first line to it. Settings the agent's config holds travel here, so
    a worker needs no config file (a managed agent's subscriptions are not in its file)."""

    device_id: str
    part: int
    workers: int
    subscription: SubscriptionSpec
    handler: HandlerSpec
    client_id: str
    share_group: str
    local_broker: LocalBrokerConfig
    runtime: RuntimeConfig
    docker_host: str | None
    max_payload: int
    deadletter_topic: str
    log_level: str = "INFO"


def part_key(base: str, part: int) -> str:
    """The outbox key (checkpoint or packet ids) of one worker's part: ``name@revision#p1``."""
    return f"{base}#p{part}"


class Link:
    """One end of the pipe; ``request`` waits for the other end's reply with the same ``id``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.WriteTransport | asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def send(self, message: dict[str, Any]) -> None:
        self._writer.write(orjson.dumps(message) + b"\n")

    async def receive(self) -> dict[str, Any] | None:
        """The next message that is not a reply to a request of ours; None at the end of the pipe."""
        while True:
            try:
                line = await self._reader.readline()
            except (ConnectionError, ValueError):
                line = b""
            if not line:
                for waiter in self._waiting.values():
                    if not waiter.done():
                        waiter.set_exception(OutboxError("the agent's pipe closed"))
                self._waiting.clear()
                return None
            message: dict[str, Any] = orjson.loads(line)
            reply_to = message.get("reply_to")
            if reply_to is None:
                return message
            replied = self._waiting.pop(int(reply_to), None)
            if replied is not None and not replied.done():
                replied.set_result(message)

    async def first(self) -> dict[str, Any] | None:
        """The first line, before anything else runs (the worker's assignment)."""
        line = await self._reader.readline()
        return orjson.loads(line) if line else None

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` and return the reply; ``receive`` must be running to read it."""
        self._next += 1
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = waiter
        self.send({**message, "id": self._next})
        return await waiter


async def stdio_link() -> Link:
    """The worker's end: stdin from the agent, and the real stdout to it. File descriptor 1 then points at
    stderr, so that nothing printed by a library can corrupt the pipe."""
    loop = asyncio.get_running_loop()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, out)
    assert isinstance(transport, asyncio.WriteTransport)
    return Link(reader, transport)


def end_session(lb: LocalBrokerConfig, client_id: str) -> None:
    """End a worker's broker session for good (its part will not run again): connect with a clean start and
    no session expiry, then disconnect. Blocking; run it in a thread."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    v5 = lb.protocol == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else True)
    if lb.username:
        client.username_pw_set(lb.username, lb.password)
    try:
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
            client.connect(lb.host, lb.port, 10, clean_start=True, properties=props)
        else:
            client.connect(lb.host, lb.port, 10)
        for _ in range(40):  # until the CONNACK (the broker dropped the old session), at most ~2 s
            client.loop(timeout=0.05)
            if client.is_connected():
                break
        client.disconnect()
    except OSError as exc:
        import logging

        logging.getLogger(__name__).warning("could not end the session of %s: %s", client_id, exc)
