"""A dispatcher under test: the in-process FunctionRuntime (recording its batches), a real outbox, fake
publish/ack and an injected clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from edge_agent.aggregation.windows import WindowSet
from edge_agent.broker import Incoming
from edge_agent.dispatcher import Dispatcher
from edge_agent.outbox import Outbox
from edge_agent.runtime.base import EventTuple, FunctionRuntime, Outcome
from edge_protocol.aggregate import WindowResult
from edge_protocol.deadletter import DeadLetter
from edge_protocol.specs import SubscriptionSpec

DL_TOPIC = "edgefleet/deadletter/temp"


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class FakePublish:
    """Records (topic, payload, qos); returns None, or a future the loop resolves on its next turn."""

    deferred: bool = False
    sent: list[tuple[str, bytes, int]] = field(default_factory=list)
    futures: list[asyncio.Future[None]] = field(default_factory=list)

    def __call__(self, topic: str, payload: bytes, qos: int, retain: bool) -> Awaitable[None] | None:
        self.sent.append((topic, payload, qos))
        if not self.deferred:
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        loop.call_soon(fut.set_result, None)
        self.futures.append(fut)
        return fut

    def deadletters(self) -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(p) for t, p, _ in self.sent if t == DL_TOPIC]


@dataclass
class Harness:
    dispatcher: Dispatcher
    outbox: Outbox
    publish: FakePublish
    acked: list[int]
    clock: Clock
    progress: asyncio.Event
    task: asyncio.Task[None] | None = None

    async def until_acked(self, n: int) -> None:
        """Wait (bounded) until ``n`` events were acknowledged: the default fake ack signals each one."""
        async with asyncio.timeout(5):
            while len(self.acked) < n:
                self.progress.clear()
                await self.progress.wait()

    async def until_records(self) -> list[WindowResult]:
        """Wait (bounded) until the outbox holds a closed window; those it holds. Polled: a window closed by the
        dispatcher's own timer signals nothing the test could wait on."""
        async with asyncio.timeout(5):
            while not (records := await self.records()):
                await asyncio.sleep(0.02)
        return records

    def msg(self, mid: int, payload: Any, topic: str = "sensors/s1/temp", raw: bytes | None = None) -> Incoming:
        body = raw if raw is not None else orjson.dumps(payload)
        return Incoming(mid=mid, topic=topic, payload=body, qos=1, dup=False, arrived=self.clock())

    def start(self) -> None:
        self.task = asyncio.create_task(self.dispatcher.run(), name="test.dispatch")

    async def finish(self) -> None:
        if self.task is None:
            self.start()
        await self.dispatcher.drain()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    async def records(self) -> list[WindowResult]:
        return [WindowResult.model_validate_json(b) for _, b in await self.outbox.fetch(0, 1000)]


def handler(topic: str, payload: Any, ts: float) -> dict[str, Any]:
    if payload == "boom":
        raise KeyError("boom")
    out = {"c": payload["c"], "label": "x"}
    if payload.get("alert"):
        out["__publish__"] = [{"topic": "alerts/hot", "payload": {"c": payload["c"]}, "qos": 1}]
    return out


class BatchRecordingRuntime(FunctionRuntime):
    """The in-process runtime, keeping the size of every batch it was given."""

    def __init__(self, name: str, func: Any) -> None:
        super().__init__(name, func)
        self.batches: list[int] = []

    async def _process(self, events: list[EventTuple], keys: list[str] | None) -> list[Outcome]:
        self.batches.append(len(events))
        return await super()._process(events, keys)


MakeHarness = Callable[..., Harness]


@contextlib.asynccontextmanager
async def harnesses(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    """Makes harnesses on one outbox file; closes their outboxes at the end."""
    boxes: list[Outbox] = []

    def build(
        *,
        ack: Callable[[Incoming], None] | None = None,
        publish: FakePublish | None = None,
        max_payload: int = 1024,
        batch_size: int = 500,
        linger: float = 0.0,
        func: Any = handler,
        **spec_kw: Any,
    ) -> Harness:
        spec_kw.setdefault("window", {"kind": "tumbling", "size": 10})
        spec = SubscriptionSpec(name="temp", topic="sensors/#", handler="h", **spec_kw)
        clock = Clock()
        outbox = Outbox(tmp_path / "outbox.sqlite", clock=clock)
        boxes.append(outbox)
        acked: list[int] = []
        progress = asyncio.Event()

        def record_ack(m: Incoming) -> None:
            acked.append(m.mid)
            progress.set()

        pub = publish or FakePublish()
        d = Dispatcher(
            spec,
            runtime=BatchRecordingRuntime("h", func),
            windows=WindowSet(spec, "dev"),
            outbox=outbox,
            publish=pub,
            ack=ack or record_ack,
            deadletter_topic=DL_TOPIC,
            max_payload=max_payload,
            batch_size=batch_size,
            linger=linger,
            clock=clock,
        )
        return Harness(d, outbox, pub, acked, clock, progress)

    yield build
    for box in boxes:
        await box.aclose()
