"""Windows and their watermark when the device's wall clock jumps: +-1 h under a steady stream of fresh events.

The dispatcher runs with the in-process runtime, a real outbox and an injected clock: a SteadyWallClock over a
fake wall clock (which the test steps) and a fake monotonic clock (which only moves with real time). One event
arrives every real second; after each, the windows closed so far must be exactly those whose end plus the
lateness real time has passed -- none earlier (a forward jump must not close them), none later -- and no event
may be dead-lettered as late (a backward correction must not make fresh events late).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_agent.aggregation.windows import WindowSet
from edge_agent.broker import Incoming
from edge_agent.dispatcher import Dispatcher
from edge_agent.outbox import Outbox
from edge_agent.runtime.base import FunctionRuntime
from edge_protocol.aggregate import WindowResult
from edge_protocol.clocks import SteadyWallClock
from edge_protocol.deadletter import DeadLetter
from edge_protocol.specs import SubscriptionSpec

DL = "edgefleet/deadletter/temp"
BASE, SIZE, LATENESS = 100_000.0, 10.0, 2.0
HOUR = 3600.0


class Device:
    """Real time since the start, and the device's wall clock: real time plus whatever the test stepped it by."""

    def __init__(self) -> None:
        self.real = 0.5
        self.offset = 0.0

    def wall(self) -> float:
        return BASE + self.real + self.offset

    def monotonic(self) -> float:
        return self.real


class Rig:
    def __init__(self, tmp_path: Path, device: Device, clock: SteadyWallClock, **spec_kw: Any) -> None:
        self.device, self.clock = device, clock
        self.spec = SubscriptionSpec(
            name="temp", topic="sensors/#", handler="h", window={"kind": "tumbling", "size": SIZE},
            lateness=LATENESS, **spec_kw,
        )  # fmt: skip
        self.outbox = Outbox(tmp_path / "outbox.sqlite", clock=clock.now)
        self.sent: list[tuple[str, bytes]] = []
        self.acked = 0
        self.progress = asyncio.Event()
        self.dispatcher: Dispatcher | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, snapshot: dict[str, Any] | None = None) -> None:
        windows = WindowSet(self.spec, "dev")
        if snapshot is not None:
            assert windows.restore(snapshot)
        self.dispatcher = Dispatcher(
            self.spec,
            runtime=FunctionRuntime("h", lambda _t, p, _ts: {"v": p["v"]}),
            windows=windows,
            outbox=self.outbox,
            publish=lambda topic, payload, _q, _r: self.sent.append((topic, payload)),
            ack=self._ack,
            deadletter_topic=DL,
            max_payload=1024,
            clock=self.clock,
        )
        self.task = asyncio.create_task(self.dispatcher.run())

    def _ack(self, _msg: Incoming) -> None:
        self.acked += 1
        self.progress.set()

    async def event(self, mid: int, payload: dict[str, Any]) -> None:
        """One event, stamped on arrival as the intake does, and processed and committed before returning."""
        assert self.dispatcher is not None
        want = self.acked + 1
        msg = Incoming(mid=mid, topic="sensors/a", payload=orjson.dumps(payload), qos=1, dup=False,
                       arrived=self.clock.now())  # fmt: skip
        await self.dispatcher.put(msg)
        async with asyncio.timeout(5):
            while self.acked < want:
                self.progress.clear()
                await self.progress.wait()

    async def stop(self) -> None:
        assert self.dispatcher is not None
        assert self.task is not None
        await self.dispatcher.drain()
        await asyncio.wait_for(self.task, 5)

    async def closed(self) -> dict[float, int]:
        """window start -> events, of every window committed to the outbox so far."""
        records = [WindowResult.model_validate_json(b) for _, b in await self.outbox.fetch(0, 10_000)]
        return {r.window_start: r.events for r in records}

    def late(self) -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(p) for t, p in self.sent if t == DL]


def due(real: float) -> set[float]:
    """Starts of the windows that should be closed at ``real``: their end plus the lateness has passed."""
    now = BASE + real
    return {BASE + SIZE * k for k in range(int(now // SIZE) + 1) if BASE + SIZE * (k + 1) <= now - LATENESS}


@pytest.fixture(params=[False, True], ids=["arrival-time", "event-time"])
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    device = Device()
    event_time = {"event_time_field": "t"} if request.param else {}
    r = Rig(tmp_path, device, SteadyWallClock(device.wall, device.monotonic), **event_time)
    yield r
    await r.outbox.aclose()


async def stream(rig: Rig, jumps: dict[int, float], seconds: int) -> dict[float, int]:
    """One event a second for ``seconds``, the wall clock stepped by ``jumps[i]`` before event ``i``; checks the
    closed windows after every event; returns how many events each window holds (at real times)."""
    expected: dict[float, int] = {}
    for i in range(1, seconds + 1):
        rig.device.offset += jumps.get(i, 0.0)
        rig.device.real += 1.0
        real_ts = BASE + rig.device.real
        expected[real_ts // SIZE * SIZE] = expected.get(real_ts // SIZE * SIZE, 0) + 1
        # Event time from the source, whose clock does not jump with the device's; or the arrival time.
        await rig.event(i, {"v": float(i), "t": real_ts} if rig.spec.event_time_field else {"v": float(i)})
        closed = await rig.closed()
        assert not rig.late(), f"event {i}: {[(d.reason, d.detail) for d in rig.late()]}"
        assert set(closed) == due(rig.device.real), f"after event {i} at real time {rig.device.real}"
    return expected


@pytest.mark.parametrize("jump", [HOUR, -HOUR], ids=["forward", "backward"])
async def test_a_clock_jump_and_its_correction_neither_close_windows_early_nor_make_fresh_events_late(
    rig: Rig, jump: float
) -> None:
    async with rig.outbox:
        rig.start()
        expected = await stream(rig, {25: jump, 55: -jump}, 80)
        await rig.stop()
        closed = await rig.closed()
    assert closed == {start: n for start, n in expected.items() if start in closed}
    assert len(closed) == len(due(rig.device.real))
    assert rig.clock.jumps == 2
    assert rig.clock.skew == 0.0


@pytest.mark.parametrize("jump", [HOUR, -HOUR], ids=["forward", "backward"])
async def test_after_a_lasting_jump_windows_keep_closing_on_time(rig: Rig, jump: float) -> None:
    async with rig.outbox:
        rig.start()
        expected = await stream(rig, {25: jump}, 60)
        await rig.stop()
        closed = await rig.closed()
    assert closed == {start: n for start, n in expected.items() if start in closed}
    assert rig.clock.skew == jump


async def test_after_a_restart_arrival_time_goes_on_from_the_checkpointed_watermark(tmp_path: Path) -> None:
    # The first run's clock was an hour fast the whole time (no jump seen); the device is restarted (the monotonic
    # clock starts over) with the clock set right. Fresh events must not be late, and no window closed in the
    # first run may open again (its id would come twice).
    first = Device()
    first.offset = HOUR
    rig = Rig(tmp_path, first, SteadyWallClock(first.wall, first.monotonic))
    async with rig.outbox:
        rig.start()
        for i in range(1, 31):
            first.real += 1.0
            await rig.event(i, {"v": 1.0})
        await rig.stop()
        closed_first = await rig.closed()
        (snapshot,) = (await rig.outbox.checkpoints()).values()
    await rig.outbox.aclose()

    second = Device()
    second.real = 0.0
    clock = SteadyWallClock(lambda: second.wall() + first.real, second.monotonic)  # a minute later, real time
    again = Rig(tmp_path, second, clock)
    async with again.outbox:
        again.start(orjson.loads(snapshot) if isinstance(snapshot, bytes) else snapshot)
        for i in range(31, 61):
            second.real += 1.0
            await again.event(i, {"v": 1.0})
        await again.stop()
        closed = await again.closed()
    await again.outbox.aclose()
    assert not again.late(), [(d.reason, d.detail) for d in again.late()]
    assert closed_first
    assert set(closed_first) <= set(closed)
    assert sum(closed.values()) + sum(w["events"] for w in _open(again)) == 60
    assert clock.now() >= max(closed) + SIZE + LATENESS  # the restarted clock went on from the checkpoint


def _open(rig: Rig) -> list[dict[str, Any]]:
    assert rig.dispatcher is not None
    windows: list[dict[str, Any]] = rig.dispatcher.windows.snapshot()["windows"]
    return windows
