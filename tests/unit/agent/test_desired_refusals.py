"""What a refusal leaves behind, and failures that must not stop the agent.

A version refused for cause (a crash-loop on probation, a corrupt layer) is kept on disk and not tried again
after a restart; one refused for a passing reason (the registry out of reach) is tried again after a backoff.
A desired-state file that cannot be written (disk full) is a ``storage`` refusal and alarm, not a crash; an
exception in the probation watch is logged and counted, and the watch goes on.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import orjson
import pytest

import edge_agent.reconciler as reconciler_module
from edge_agent.refusals import refused_path
from edge_agent.staging import Trial
from edge_protocol.specs import HandlerSpec
from tests.unit.agent.test_desired_all_or_nothing import SA2, SC, V1, World, _running, _wait, envelope
from tests.unit.agent.test_pipeline_switch import Fake

V2 = envelope(2, {"a": "a2"}, [SA2, SC])


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _fast_retries(dev: Any) -> None:
    memory = getattr(dev.reconciler, "memory", None)  # (absent before refusals were told apart)
    if memory is not None:
        memory._retry_after = 0.3


async def _good(dev: Any, version: int) -> None:
    await _wait(lambda: dev.reconciler.good is not None and dev.reconciler.good[0].version == version)


@pytest.mark.parametrize("cause", ["probation", "corrupt-layer"])
async def test_a_version_refused_for_cause_is_not_tried_again_after_a_restart(world: World, cause: str) -> None:
    async with world.agent() as dev:
        await dev.reconciler.on_message(V1)
        await _good(dev, 1)
        if cause == "corrupt-layer":
            world.bad_pulls.add("a2")  # "filesystem layer verification failed"
        await dev.reconciler.on_message(V2)
        if cause == "probation":
            new_a = dev.pipeline.runtimes["a"]
            assert isinstance(new_a, Fake)
            new_a.crashes = 2
        await _wait(lambda: dev.reconciler.refused is not None)
    world.bad_pulls.clear()
    async with world.agent() as dev:  # restarted; the broker hands it the retained v2 again
        assert await dev.reconciler.load_stored()
        made, pulled = len(dev.made), len(dev.pulled)
        await dev.reconciler.on_message(V2)
        assert dev.reconciler.applied_version == 1, "the refused version is not tried again"
        assert (len(dev.made), len(dev.pulled)) == (made, pulled)
        refused = dev.reconciler.refused
        assert refused is not None
        assert (refused.version, refused.step) == (2, "pull" if cause == "corrupt-layer" else "probation")
    kept = orjson.loads(refused_path(world.data / "desired.json").read_bytes())
    assert kept["refusal"]["version"] == 2
    assert len(kept["envelope_sha256"]) == 64


async def test_a_pull_that_could_not_reach_the_registry_is_tried_again_after_a_backoff(world: World) -> None:
    reachable = False

    async def pull(spec: HandlerSpec) -> None:
        if not reachable:
            raise RuntimeError(f"Get https://registry/v2/{spec.image}: dial tcp 10.0.0.9:443: connection refused")

    async with world.agent() as dev:
        await dev.reconciler.on_message(V1)
        await _good(dev, 1)
        dev.pipeline._pull = pull
        _fast_retries(dev)
        await dev.reconciler.on_message(V2)
        refused = dev.reconciler.refused
        assert refused is not None
        assert (refused.version, refused.step) == (2, "pull")
        assert not refused_path(world.data / "desired.json").exists(), "a passing refusal is not kept for good"
        made = len(dev.made)
        await dev.reconciler.on_message(V2)  # re-delivered before the backoff ran out: not tried
        assert len(dev.made) == made
        reachable = True
        await _wait(lambda: dev.reconciler.applied_version == 2)  # tried again by itself
        await _good(dev, 2)


async def test_a_desired_file_that_cannot_be_written_is_a_storage_refusal_not_a_crash(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = reconciler_module._write_atomically
    full = True

    def disk_full(path: Path, data: bytes) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    alarms: list[tuple[str, bool]] = []
    async with world.agent() as dev:
        await dev.reconciler.on_message(V1)
        await _good(dev, 1)
        dev.reconciler._alarm = lambda name, on: alarms.append((name, on))
        _fast_retries(dev)
        monkeypatch.setattr(reconciler_module, "_write_atomically", disk_full)
        await dev.reconciler.on_message(V2)  # the received copy cannot be written: refused, nothing changes
        assert dev.reconciler.applied_version == 1
        assert _running(dev)[0] == {"a": "a1", "b": "b1"}
        assert dev.reconciler.checks.refusals.get("storage") == 1
        assert dev.reconciler.last_refusal is not None
        assert "No space left" in dev.reconciler.last_refusal
        assert alarms == [("storage", True)]
        full = False
        await _good(dev, 2)  # tried again after the backoff, the disk has room again
        assert alarms == [("storage", True), ("storage", False)]


async def test_an_exception_in_the_probation_watch_does_not_stop_the_agent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Trial.crash_looping
    raised: list[int] = []

    def flaky(self: Trial) -> Any:
        if not raised:
            raised.append(1)
            raise RuntimeError("injected")
        return real(self)

    async with world.agent() as dev:
        await dev.reconciler.on_message(V1)
        await _good(dev, 1)
        monkeypatch.setattr(Trial, "crash_looping", flaky)
        await dev.reconciler.on_message(V2)
        await _good(dev, 2)  # the watch went on after the failed check and passed the trial
        assert raised == [1]
        assert dev.pipeline.watch_errors == 1
