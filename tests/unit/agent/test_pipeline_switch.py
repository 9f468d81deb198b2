"""Pipeline handler switches: health-gated, the old version kept on refusal and restored on a crash-loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.intake import Intake
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline
from edge_agent.runtime.base import FunctionRuntime, HandlerRuntime
from edge_agent.staging import UpdateRefused
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from edge_protocol.topics import Topics


class FakeLocal:
    """The parts of LocalBroker a pipeline uses."""

    def __init__(self) -> None:
        self.filters: list[tuple[str, int]] = []

    def set_filters(self, filters: list[tuple[str, int]]) -> None:
        self.filters = filters

    def publish(self, *_a: Any) -> None:
        return None

    def ack(self, *_a: Any) -> None:
        return None

    def watermark(self) -> float:
        return 0.0


class Fake(FunctionRuntime):
    """A runtime whose start, ping and restarts (``crashes``) are set by the test."""

    def __init__(self, spec: HandlerSpec, *, start_ok: bool = True, ping_ok: bool = True) -> None:
        super().__init__(spec.name, lambda _t, _p, _ts: {"image": spec.image}, spec=spec)
        self._start_ok, self._ping_ok = start_ok, ping_ok
        self.crashes = 0
        self.closed = False

    @property
    def restarts(self) -> int:
        return self.crashes

    async def start(self) -> None:
        if not self._start_ok:
            raise RuntimeError("pull failed: registry unreachable")
        await super().start()

    async def ping(self) -> bool:
        return self._ping_ok

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


def spec(image: str) -> HandlerSpec:
    return HandlerSpec(name="h", image=image)


SUB = SubscriptionSpec(name="s", topic="a/#", handler="h")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Pipeline, dict[str, dict[str, Any]]]]:
    behaviour: dict[str, dict[str, Any]] = {}
    made: list[Fake] = []

    def factory(s: HandlerSpec) -> HandlerRuntime:
        runtime = Fake(s, **behaviour.get(s.image, {}))
        made.append(runtime)
        return runtime

    local = FakeLocal()
    async with Outbox(tmp_path / "o.sqlite") as outbox, asyncio.TaskGroup() as tg:
        pipeline = Pipeline(
            device_id="d", topics=Topics(), outbox=outbox, local=local, intake=Intake(local),  # type: ignore[arg-type]
            runtime_factory=factory, max_payload=1024, alarm=lambda _n, _o: None, task_group=tg,
            health_timeout=1.0, probation=0.6,
        )
        yield pipeline, behaviour
        await pipeline.aclose()


async def _wait(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def test_update_that_cannot_start_or_answer_leaves_the_old_version_running(rig: Any) -> None:
    pipeline, behaviour = rig
    await pipeline.apply([spec("v1")], [SUB])
    await _wait(lambda: pipeline.trial is None)  # the first document's own probation
    v1 = pipeline.runtimes["h"]
    behaviour["v2"] = {"start_ok": False}
    behaviour["v3"] = {"ping_ok": False}
    with pytest.raises(UpdateRefused) as refused:
        await pipeline.apply([spec("v2")], [SUB])
    assert refused.value.step == "start"
    assert pipeline.runtimes["h"] is v1
    assert pipeline.dispatchers["s"].runtime is v1
    assert pipeline.update_errors["h"][0] == "v2"
    assert "registry unreachable" in pipeline.update_errors["h"][1]
    with pytest.raises(UpdateRefused) as refused:
        await pipeline.apply([spec("v3")], [SUB])
    assert refused.value.step == "health"
    assert pipeline.runtimes["h"] is v1
    assert pipeline.update_errors["h"] == ("v3", "no answer to the health ping within 1s")
    assert not v1.closed


async def test_a_good_update_takes_over_and_the_old_version_stops_after_probation(rig: Any) -> None:
    pipeline, _ = rig
    await pipeline.apply([spec("v1")], [SUB])
    await _wait(lambda: pipeline.trial is None)  # the first document's own probation
    v1 = pipeline.runtimes["h"]
    await pipeline.apply([spec("v2")], [SUB])
    v2 = pipeline.runtimes["h"]
    assert v2 is not v1
    assert pipeline.dispatchers["s"].runtime is v2
    assert not v1.closed  # on probation
    await _wait(lambda: v1.closed)
    assert pipeline.update_errors == {}


async def test_a_crash_loop_during_probation_puts_the_old_version_back(rig: Any) -> None:
    pipeline, _ = rig
    await pipeline.apply([spec("v1")], [SUB])
    await _wait(lambda: pipeline.trial is None)  # the first document's own probation
    v1 = pipeline.runtimes["h"]
    await pipeline.apply([spec("v2")], [SUB])
    v2 = pipeline.runtimes["h"]
    v2.crashes = 2
    await _wait(lambda: pipeline.runtimes["h"] is v1 and v2.closed)  # the revert done
    assert pipeline.dispatchers["s"].runtime is v1
    assert pipeline.handler_specs["h"].image == "v1"
    assert v2.closed
    assert not v1.closed
    image, reason = pipeline.update_errors["h"]
    assert image == "v2"
    assert reason.startswith("crash-loop")
