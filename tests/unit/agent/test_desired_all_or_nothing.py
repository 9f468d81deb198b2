"""Desired state is applied all-or-nothing: one failing handler refuses the whole document (handlers and
subscriptions), a crash-loop during probation reverts the whole document, a refused version is not retried on
its re-deliveries, and a restart runs the last good document, not the last received one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.intake import Intake
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline
from edge_agent.reconciler import Reconciler, received_path
from edge_agent.runtime.base import HandlerRuntime
from edge_protocol.desired import DesiredDocument, sign_document
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from edge_protocol.topics import Topics
from tests.unit.agent.test_pipeline_switch import Fake, FakeLocal

KEY = Ed25519PrivateKey.generate()


def envelope(version: int, handlers: dict[str, str], subs: list[SubscriptionSpec]) -> bytes:
    doc = DesiredDocument(
        device="d",
        version=version,
        issued_at=0.0,
        handlers=[HandlerSpec(name=n, image=image) for n, image in handlers.items()],
        subscriptions=subs,
    )
    return sign_document(doc, KEY).model_dump_json().encode()


SA = SubscriptionSpec(name="sa", topic="a/#", handler="a")
SB = SubscriptionSpec(name="sb", topic="b/#", handler="b")
SA2 = SubscriptionSpec(name="sa", topic="a2/#", handler="a")
SC = SubscriptionSpec(name="sc", topic="c/#", handler="a")
V1 = envelope(1, {"a": "a1", "b": "b1"}, [SA, SB])


@dataclass
class Device:
    pipeline: Pipeline
    reconciler: Reconciler
    local: FakeLocal
    made: list[Fake]
    pulled: list[str] = field(default_factory=list)


@dataclass
class World:
    """What lasts across agent restarts: the data dir and the images' behaviour."""

    data: Path
    behaviour: dict[str, dict[str, Any]] = field(default_factory=dict)
    bad_pulls: set[str] = field(default_factory=set)

    @contextlib.asynccontextmanager
    async def agent(self, probation: float = 0.6) -> AsyncIterator[Device]:
        made: list[Fake] = []
        pulled: list[str] = []

        def factory(s: HandlerSpec) -> HandlerRuntime:
            runtime = Fake(s, **self.behaviour.get(s.image, {}))
            made.append(runtime)
            return runtime

        async def pull(s: HandlerSpec) -> None:
            pulled.append(s.image)
            if s.image in self.bad_pulls:
                raise RuntimeError(f"filesystem layer verification failed for {s.image}")

        local = FakeLocal()
        async with Outbox(self.data / "outbox.sqlite") as outbox, asyncio.TaskGroup() as tg:
            pipeline = Pipeline(
                device_id="d", topics=Topics(), outbox=outbox, local=local, intake=Intake(local),  # type: ignore[arg-type]
                runtime_factory=factory, max_payload=1024, alarm=lambda _n, _o: None, task_group=tg,
                health_timeout=0.5, probation=probation, pull=pull,
            )
            reconciler = Reconciler(
                device_id="d", public_key=KEY.public_key(), store_path=self.data / "desired.json",
                pipeline=pipeline, on_change=lambda: None, admit_tags=True,
            )
            try:
                yield Device(pipeline, reconciler, local, made, pulled)
            finally:
                await pipeline.aclose()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


async def _wait(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


def _running(dev: Device) -> tuple[dict[str, str], dict[str, SubscriptionSpec]]:
    images = {n: s.image for n, s in dev.pipeline.handler_specs.items()}
    return images, {n: d.spec for n, d in dev.pipeline.dispatchers.items()}


async def _good_v1(dev: Device) -> None:
    await dev.reconciler.on_message(V1)
    await _wait(lambda: dev.reconciler.good is not None)
    assert dev.reconciler.applied_version == 1


@pytest.mark.parametrize(("bad", "step"), [("pull", "pull"), ("start", "start"), ("ping", "health")])
async def test_one_failing_handler_refuses_the_whole_document(world: World, bad: str, step: str) -> None:
    if bad == "pull":
        world.bad_pulls.add("b2")
    else:
        world.behaviour["b2"] = {"start_ok": False} if bad == "start" else {"ping_ok": False}
    async with world.agent() as dev:
        await _good_v1(dev)
        before = _running(dev)
        objects = dict(dev.pipeline.runtimes), dict(dev.pipeline.dispatchers)
        filters = list(dev.local.filters)
        made = len(dev.made)
        # a: a good new version; b: a failing one; sa changed, sb dropped, sc added.
        v2 = envelope(2, {"a": "a2", "b": "b2"}, [SA2, SC])
        await dev.reconciler.on_message(v2)

        assert _running(dev) == before
        assert (dict(dev.pipeline.runtimes), dict(dev.pipeline.dispatchers)) == objects
        assert dev.local.filters == filters
        assert dev.reconciler.applied_version == 1
        refused = dev.reconciler.refused
        assert refused is not None
        assert (refused.version, refused.step, refused.handler, refused.image) == (2, step, "b", "b2")
        assert dev.reconciler.last_refusal is not None
        assert dev.reconciler.last_refusal.startswith(f"update-{step}: version 2: handler b (b2)")
        assert dev.pipeline.update_errors["b"][0] == "b2"
        assert all(r.closed for r in dev.made[made:]), "every runtime started for the refused document is closed"
        if step == "pull":
            assert len(dev.made) == made, "nothing starts before every image is pulled"
        assert (world.data / "desired.json").read_bytes() == V1
        assert received_path(world.data / "desired.json").read_bytes() == v2

        # The retained re-delivery of the refused version is not tried again; a newer version is.
        pulls, made = len(dev.pulled), len(dev.made)
        await dev.reconciler.on_message(v2)
        assert (len(dev.pulled), len(dev.made)) == (pulls, made)
        world.bad_pulls.clear()
        world.behaviour.clear()
        await dev.reconciler.on_message(envelope(3, {"a": "a2", "b": "b3"}, [SA2, SC]))
        assert dev.reconciler.applied_version == 3
        assert _running(dev) == ({"a": "a2", "b": "b3"}, {"sa": SA2, "sc": SC})


async def test_a_crash_loop_on_probation_reverts_handlers_and_subscriptions(world: World) -> None:
    async with world.agent() as dev:
        await _good_v1(dev)
        before = _running(dev)
        runtimes, dispatchers = dict(dev.pipeline.runtimes), dict(dev.pipeline.dispatchers)
        filters = list(dev.local.filters)
        v2 = envelope(2, {"a": "a2"}, [SA2, SC])
        await dev.reconciler.on_message(v2)
        assert _running(dev) == ({"a": "a2"}, {"sa": SA2, "sc": SC})
        assert dev.reconciler.applied_version == 2
        assert not runtimes["b"].closed, "what the update replaced stays up during its probation"
        new_a = dev.pipeline.runtimes["a"]
        assert isinstance(new_a, Fake)
        new_a.crashes = 3

        await _wait(lambda: dev.reconciler.refused is not None)
        assert _running(dev) == before
        assert dev.pipeline.runtimes == runtimes
        assert dev.pipeline.dispatchers == dispatchers, "the old subscriptions' dispatchers serve again"
        assert all(d.runtime is runtimes[d.spec.handler] for d in dev.pipeline.dispatchers.values())
        assert dev.local.filters == filters
        assert new_a.closed
        assert not any(r.closed for r in runtimes.values())
        assert dev.reconciler.applied_version == 1
        refused = dev.reconciler.refused
        assert refused is not None
        assert (refused.version, refused.step, refused.handler) == (2, "probation", "a")
        assert refused.reason.startswith("crash-loop")
        assert (world.data / "desired.json").read_bytes() == V1
        made = len(dev.made)
        await dev.reconciler.on_message(v2)  # re-delivered: not tried again
        assert len(dev.made) == made
        assert dev.reconciler.applied_version == 1


async def test_a_good_update_becomes_the_last_good_after_its_probation(world: World) -> None:
    async with world.agent() as dev:
        await _good_v1(dev)
        old_b = dev.pipeline.runtimes["b"]
        v2 = envelope(2, {"a": "a2"}, [SA2])
        await dev.reconciler.on_message(v2)
        assert (world.data / "desired.json").read_bytes() == V1, "not good before its probation passed"
        await _wait(lambda: dev.reconciler.good is not None and dev.reconciler.good[0].version == 2)
        assert (world.data / "desired.json").read_bytes() == v2
        assert dev.reconciler.applied_version == 2
        assert old_b.closed
        assert dev.reconciler.refused is None


@pytest.mark.parametrize("how", ["on-probation", "refused"])
async def test_a_restart_runs_the_last_good_document_not_the_last_received(world: World, how: str) -> None:
    async with world.agent(probation=30.0) as dev:
        await dev.reconciler.on_message(V1)
        assert dev.pipeline.trial is not None
    async with world.agent(probation=0.6) as dev:  # crashed during v1's probation: nothing is good yet
        assert not await dev.reconciler.load_stored()
        assert _running(dev) == ({}, {})
        await _good_v1(dev)
    if how == "refused":
        world.behaviour["a2"] = {"ping_ok": False}
    async with world.agent(probation=30.0) as dev:
        assert await dev.reconciler.load_stored()
        await dev.reconciler.on_message(envelope(2, {"a": "a2"}, [SA2, SC]))
        assert (dev.reconciler.applied_version == 2) is (how == "on-probation")
    assert b'\\"version\\":2' in received_path(world.data / "desired.json").read_bytes()
    async with world.agent() as dev:
        assert await dev.reconciler.load_stored()
        assert dev.reconciler.applied_version == 1
        assert _running(dev) == ({"a": "a1", "b": "b1"}, {"sa": SA, "sb": SB})


@pytest.mark.parametrize("damage", ["missing", "garbage", "tampered", "other-device"])
async def test_a_missing_or_bad_good_file_starts_empty(world: World, damage: str) -> None:
    path = world.data / "desired.json"
    if damage == "garbage":
        path.write_bytes(b"\x00{not json")
    elif damage == "tampered":
        path.write_bytes(V1.replace(b"a1", b"a9"))
    elif damage == "other-device":
        other = DesiredDocument(device="e", version=1, issued_at=0.0)
        path.write_bytes(sign_document(other, KEY).model_dump_json().encode())
    async with world.agent() as dev:
        assert not await dev.reconciler.load_stored()
        assert _running(dev) == ({}, {})
        await _good_v1(dev)  # and the hub's next document is applied as usual


def _expiring(version: int, handlers: dict[str, str], subs: list[SubscriptionSpec], expires_at: float) -> bytes:
    doc = DesiredDocument(
        device="d",
        version=version,
        issued_at=0.0,
        expires_at=expires_at,
        handlers=[HandlerSpec(name=n, image=image) for n, image in handlers.items()],
        subscriptions=subs,
    )
    return sign_document(doc, KEY).model_dump_json().encode()


async def test_a_renewal_that_races_a_revert_does_not_make_the_reverted_version_good(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal of the version on trial is judged, then its received copy is written (in a thread); a revert
    of that version in between must leave the last good document alone, on disk and in memory."""
    import threading

    import edge_agent.reconciler as reconciler_module

    write = reconciler_module._write_atomically
    entered, release = threading.Event(), threading.Event()
    v2 = _expiring(2, {"a": "a2"}, [SA2, SC], expires_at=4e9)
    v2_renewed = _expiring(2, {"a": "a2"}, [SA2, SC], expires_at=5e9)

    def slow_write(path: Path, data: bytes) -> None:
        if data == v2_renewed and path == received_path(world.data / "desired.json"):
            entered.set()
            release.wait(5)
        write(path, data)

    async with world.agent() as dev:
        await _good_v1(dev)
    async with world.agent(probation=30.0) as dev:
        assert await dev.reconciler.load_stored()
        await dev.reconciler.on_message(v2)
        assert dev.pipeline.trial is not None
        monkeypatch.setattr(reconciler_module, "_write_atomically", slow_write)
        renewal = asyncio.create_task(dev.reconciler.on_message(v2_renewed))
        await asyncio.to_thread(entered.wait, 5)
        new_a = dev.pipeline.runtimes["a"]
        assert isinstance(new_a, Fake)
        new_a.crashes = 3  # the watcher reverts v2 while the renewal's received copy is being written
        await _wait(lambda: dev.reconciler.refused is not None)
        release.set()
        await renewal
        assert dev.reconciler.applied_version == 1
        running = dev.reconciler.checks.running
        assert running is not None
        assert running.version == 1
        good = dev.reconciler.good
        assert good is not None
        assert good[1] == V1
        assert (world.data / "desired.json").read_bytes() == V1
