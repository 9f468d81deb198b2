"""Rollouts driven by synthetic reported states and an injected clock: the happy path through every step, the
ways a step halts (refused update, health timeout, error rate in the soak, no data), operators' commands, and two
controllers racing on one rollout."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError
from rich.console import Console

from hub.api.routes.releases import _rollout_out
from hub.api.schemas.rollouts import RolloutIn, RolloutOut
from hub.cli.render.rollouts import rollout_detail
from hub.desired.releases import Releases
from hub.errors import Conflict, Unprocessable
from hub.fleet.devices import Devices
from hub.fleet.labels import Selector
from hub.rollouts.controller import RolloutController
from hub.rollouts.plan import DeviceStatus, Limits, State
from tests.unit.hub.rollout_world import HEALTH, LAB, NEW, OLD, PLANT, SOAK, World, world

__all__ = ["world"]  # the fixture


def stable(w: World) -> str:
    return next(r.version for r in Releases(w.store).list("temp-c") if r.stable)


async def test_a_rollout_passes_every_step_and_the_release_becomes_stable(world: World) -> None:
    w = world
    before = w.versions()
    rid = w.start()
    assert w.get(rid).steps == [["d1"], ["d2", "d3", "d4"], ["d5"]]  # canary 1, then 50% of 5 rounded up
    await w.tick()
    assert w.image("d1") == NEW
    assert w.version("d1") == before["d1"] + 1
    assert [w.image(d) for d in ["d2", "d3", "d4", "d5", PLANT]] == [OLD] * 5
    assert w.progress(rid, "d1").desired_version == w.version("d1")

    w.report("d1", applied=before["d1"])  # an older applied version does not count, even on the new image
    await w.tick()
    assert w.progress(rid, "d1").status is DeviceStatus.ASSIGNED
    w.report("d1", processed=10)
    await w.tick()
    assert (w.progress(rid, "d1").status, w.progress(rid, "d1").soak_processed) == (DeviceStatus.SOAKING, 10)
    w.clock.advance(SOAK + 1)
    await w.tick()  # the soak time is over but no report came during it: wait
    assert w.progress(rid, "d1").status is DeviceStatus.SOAKING
    w.report("d1", processed=500, errors=5, lag=120.0)  # 5 / 495 ok: 1.0%
    await w.tick()
    d1 = w.progress(rid, "d1")
    assert (d1.status, d1.max_lag_ms, d1.soak_reports) == (DeviceStatus.PASSED, 120.0, 1)
    assert d1.reason == "error rate 1.0% (5 errors, 490 ok), max lag 120 ms"
    assert w.get(rid).step == 1

    await w.pass_step(["d2", "d3", "d4"])
    assert w.get(rid).step == 2
    assert w.image("d5") == OLD
    await w.pass_step(["d5"])
    done = w.get(rid)
    assert (done.state, done.finished_at) == (State.COMPLETED, w.clock())
    assert stable(w) == "1.1"
    assert all(w.image(d) == NEW for d in LAB)
    # The plant device was outside the target: held on the old release, and its document never changed.
    assert (w.image(PLANT), w.version(PLANT)) == (OLD, before[PLANT])
    assert w.progress(rid, PLANT).status is DeviceStatus.HELD
    assert [w.version(d) for d in LAB] == [before[d] + 1 for d in LAB]  # following stable now: same content
    await w.tick()
    assert w.get(rid).state is State.COMPLETED  # nothing moves after completion


async def test_a_refused_update_halts_the_canary_and_puts_it_back(world: World) -> None:
    w = world
    before = w.versions()
    rid = w.start()
    await w.tick()
    assigned = w.version("d1")
    w.report("d1", OLD, failed=NEW, why="pull failed: manifest unknown")  # the agent kept the old container
    await w.tick()
    r = w.get(rid)
    assert r.state is State.HALTED
    assert r.reason == "step 1: d1: update refused: pull failed: manifest unknown"
    assert (w.image("d1"), w.version("d1")) == (OLD, assigned + 1)  # back, as a new, higher version
    assert w.progress(rid, "d1").status is DeviceStatus.FAILED
    assert {d: w.version(d) for d in ["d2", "d3", "d4", "d5", PLANT]} == {
        d: before[d] for d in ["d2", "d3", "d4", "d5", PLANT]
    }
    assert all(w.progress(rid, d).status is DeviceStatus.PENDING for d in ["d2", "d3", "d4", "d5"])
    assert stable(w) == "initial"
    await w.tick()
    assert w.version("d1") == assigned + 1  # halted: no further change


async def test_a_stale_refusal_from_an_older_version_does_not_count(world: World) -> None:
    w = world
    rid = w.start()
    await w.tick()
    w.report("d1", OLD, applied=w.version("d1") - 1, failed=NEW, why="from an earlier attempt")
    await w.tick()
    assert w.get(rid).state is State.RUNNING


async def test_a_health_timeout_halts_with_the_reason(world: World) -> None:
    w = world
    rid = w.start()
    await w.tick()
    w.report("d1", healthy=False, state="restarting")
    w.clock.advance(HEALTH - 1)
    await w.tick()
    assert w.get(rid).state is State.RUNNING
    w.clock.advance(2)
    await w.tick()
    r = w.get(rid)
    assert r.state is State.HALTED
    assert r.reason is not None
    assert r.reason.endswith(f"not healthy on the new release within 2m: runs {NEW}, restarting, unhealthy")
    assert w.image("d1") == OLD


async def test_an_offline_device_times_out_and_is_named_offline(world: World) -> None:
    w = world
    Devices(w.store).record_status("d1", online=False, agent_version="0.3.0", seen_at=w.clock())
    rid = w.start()
    await w.tick()
    w.clock.advance(HEALTH + 1)
    await w.tick()
    assert w.get(rid).reason == "step 1: d1: not healthy on the new release within 2m: it has not reported (offline)"


async def test_an_error_rate_over_the_limit_halts_only_that_batch(world: World) -> None:
    w = world
    before = w.versions()
    rid = w.start()
    await w.pass_step(["d1"])
    await w.tick()  # batch 2 assigned
    batch = ["d2", "d3", "d4"]
    assigned = {d: w.version(d) for d in batch}
    for d in batch:
        w.report(d, processed=1000, errors=10)
    await w.tick()
    w.clock.advance(SOAK + 1)
    w.report("d2", processed=1100, errors=10)
    w.report("d3", processed=1090, errors=20)  # 10 errors for 90 ok: 10% > 5%
    w.report("d4", processed=1100, errors=10)
    await w.tick()
    r = w.get(rid)
    assert r.state is State.HALTED
    assert r.reason == "step 2: d3: error rate 10.0% over the limit of 5.0% (10 errors, 90 ok)"
    assert {d: (w.image(d), w.version(d)) for d in batch} == {d: (OLD, assigned[d] + 1) for d in batch}
    statuses = {d: w.progress(rid, d).status for d in [*LAB]}
    assert statuses == {
        "d1": DeviceStatus.PASSED,
        "d2": DeviceStatus.REVERTED,
        "d3": DeviceStatus.FAILED,
        "d4": DeviceStatus.REVERTED,
        "d5": DeviceStatus.PENDING,
    }
    assert w.progress(rid, "d2").reason == "step halted: d3 failed"
    assert (w.image("d1"), w.image("d5"), w.version("d5")) == (NEW, OLD, before["d5"])


async def test_lag_over_the_limit_or_a_crash_during_the_soak_halts(world: World) -> None:
    w = world
    rid = w.start(max_lag_ms=500.0)
    await w.tick()
    w.report("d1")
    await w.tick()
    w.report("d1", processed=5, lag=800.0)
    await w.tick()
    assert w.get(rid).reason == "step 1: d1: lag 800 ms over the limit of 500 ms"

    w.controller.changes.control(rid, "undo")
    rid = w.start()
    await w.tick()
    await w.controller.compile_pending()
    w.report("d1")
    await w.tick()
    w.report("d1", state="restarting", healthy=False)
    await w.tick()
    assert w.get(rid).reason == (
        f"step 1: d1: stopped running the new release during the soak: runs {NEW}, restarting, unhealthy"
    )


async def test_pause_resume_abort(world: World) -> None:
    w = world
    rid = w.start()
    await w.pass_step(["d1"])
    w.controller.changes.control(rid, "pause")
    await w.tick()
    assert (w.get(rid).state, w.image("d2")) == (State.PAUSED, OLD)  # paused: the next batch waits
    with pytest.raises(Conflict, match="rollout 1 is paused: it cannot be paused"):
        w.controller.changes.control(rid, "pause")
    w.clock.advance(HEALTH * 3)
    w.controller.changes.control(rid, "resume")
    await w.tick()
    assert w.image("d2") == NEW
    w.clock.advance(HEALTH - 1)
    w.controller.changes.control(rid, "pause")
    w.clock.advance(HEALTH * 3)
    w.controller.changes.control(rid, "resume")  # the step's health clock starts over
    await w.tick()
    assert w.get(rid).state is State.RUNNING

    aborted = w.controller.changes.control(rid, "abort").rollout
    assert (aborted.state, aborted.reason) == (State.ABORTED, "aborted by an operator")
    await w.tick()
    assert [w.image(d) for d in LAB] == [NEW, NEW, NEW, NEW, OLD]  # abort leaves devices where they are
    with pytest.raises(Conflict, match="aborted: it cannot be resumed"):
        w.controller.changes.control(rid, "resume")


async def test_undo_puts_every_touched_device_back_even_after_completion(world: World) -> None:
    w = world
    rid = w.start(canary=2, batch="100%")
    await w.pass_step(["d1", "d2"])
    await w.pass_step(["d3", "d4", "d5"])
    assert (w.get(rid).state, stable(w)) == (State.COMPLETED, "1.1")
    done = w.versions()
    undone = w.controller.changes.control(rid, "undo")
    await w.publisher.changed(undone.recompile)
    await w.controller.compile_pending(rid)
    assert (w.get(rid).state, stable(w)) == (State.UNDONE, "initial")
    assert all(w.image(d) == OLD for d in [*LAB, PLANT])
    assert all(w.version(d) == done[d] + 1 for d in LAB)
    assert w.version(PLANT) == done[PLANT]
    assert all(w.progress(rid, d).status is DeviceStatus.UNDONE for d in [*LAB, PLANT])
    with pytest.raises(Conflict, match="undone: it cannot be undone"):
        w.controller.changes.control(rid, "undo")


async def test_undo_of_a_running_rollout_moves_only_what_it_touched(world: World) -> None:
    w = world
    rid = w.start()
    await w.pass_step(["d1"])
    await w.tick()  # d2..d4 assigned
    w.controller.changes.control(rid, "undo")
    await w.controller.compile_pending(rid)
    assert [w.image(d) for d in LAB] == [OLD] * 5
    assert w.progress(rid, "d5").status is DeviceStatus.PENDING
    assert stable(w) == "initial"


async def test_two_controllers_never_advance_a_step_twice(world: World) -> None:
    w = world
    other = RolloutController(w.store, w.publisher, clock=w.clock)
    rid = w.start()
    first, second = await w.controller.prepare(rid), await other.prepare(rid)
    assert first is not None
    assert second is not None
    assert await w.controller.commit(*first)
    assert not await other.commit(*second)  # its snapshot is stale: nothing written
    await w.controller.compile_pending()
    v1 = w.version("d1")
    w.report("d1")
    first, second = await w.controller.prepare(rid), await other.prepare(rid)
    assert first is not None
    assert second is not None
    assert await other.commit(*second)
    assert not await w.controller.commit(*first)
    assert w.progress(rid, "d1").status is DeviceStatus.SOAKING

    w.clock.advance(SOAK + 1)
    w.report("d1", processed=10)
    for _ in range(3):
        await asyncio.gather(w.tick(), other.tick())
    r = w.get(rid)
    assert r.step == 1
    assert w.version("d1") == v1
    assert all(w.version(d) == w.progress(rid, d).desired_version for d in ["d2", "d3", "d4"])
    assert len({w.progress(rid, d).assigned_at for d in ["d2", "d3", "d4"]}) == 1


async def test_starting_a_rollout_checks_its_inputs(world: World) -> None:
    w = world
    rollouts = w.controller.rollouts
    with pytest.raises(Unprocessable, match=r"has no release '9\.9'"):
        rollouts.create("temp-c", "9.9", Selector(), Limits())
    with pytest.raises(Unprocessable, match="no device matching site=moon runs 'temp-c'"):
        rollouts.create("temp-c", "1.1", Selector.parse(["site=moon"]), Limits())
    rid = w.start()
    with pytest.raises(Conflict, match=f"rollout {rid} of 'temp-c' is still in progress"):
        w.start()
    everyone = w.get(rid)
    assert everyone.previous_release == "initial"
    assert (everyone.image, everyone.previous_image) == (NEW, OLD)
    assert {d for step in everyone.steps for d in step} == set(LAB)
    assert PLANT not in {p.device for p in everyone.devices}


async def test_a_device_without_events_reads_no_data_then_halts_the_rollout(world: World) -> None:
    """No data is not healthy: the canary runs the release but handles no event during its soak."""
    w = world
    rid = w.start(min_events=5)
    await w.tick()
    w.report("d1", processed=40)
    await w.tick()
    w.clock.advance(SOAK + 1)
    w.report("d1", processed=42)  # 2 events in the soak
    await w.tick()
    d1 = w.progress(rid, "d1")
    assert (d1.status, d1.reason) == (DeviceStatus.SOAKING, "no data: 2 of 5 events needed (0 errors, 2 ok)")
    assert w.get(rid).state is State.RUNNING  # waiting, not passed: the next step is not assigned
    assert w.image("d2") == OLD
    shown = _detail(w, rid)
    assert "no data" in shown
    assert "at least 5 events" in shown
    w.clock.advance(HEALTH - 2)
    await w.tick()
    assert w.get(rid).state is State.RUNNING  # soak + health_timeout since it became healthy: not over yet
    w.clock.advance(3)
    await w.tick()
    r = w.get(rid)
    assert r.state is State.HALTED
    assert r.reason == "step 1: d1: no data: 2 of 5 events needed (0 errors, 2 ok) within 150s of becoming healthy"
    assert w.image("d1") == OLD
    assert "failed: no data" in _detail(w, rid)


async def test_events_arriving_within_the_extended_soak_pass_the_step(world: World) -> None:
    w = world
    rid = w.start()  # default min_events
    await w.tick()
    w.report("d1")
    await w.tick()
    w.clock.advance(SOAK + 1)
    w.report("d1", processed=3)
    await w.tick()
    assert w.progress(rid, "d1").reason == f"no data: 3 of {Limits().min_events} events needed (0 errors, 3 ok)"
    w.clock.advance(60)
    w.report("d1", processed=Limits().min_events)
    await w.tick()
    assert w.progress(rid, "d1").status is DeviceStatus.PASSED
    assert w.get(rid).step == 1


def test_min_events_comes_from_the_request_and_goes_back_out() -> None:
    body = RolloutIn(handler="temp-c", release="1.1", min_events=25)
    assert body.limits.min_events == 25
    assert RolloutIn(handler="temp-c", release="1.1").limits.min_events == Limits().min_events
    with pytest.raises(ValidationError):
        RolloutIn(handler="temp-c", release="1.1", min_events=-1)


def _detail(w: World, rollout_id: int) -> str:
    """``hub rollout status`` as the operator sees it, from the API's JSON."""
    out = RolloutOut.model_validate_json(_rollout_out(w.get(rollout_id)).model_dump_json())
    console = Console(record=True, width=240)
    console.print(rollout_detail(out))
    return console.export_text()
