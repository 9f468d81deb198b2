"""Leases of singleton jobs (hub.leases): two ``Store``s on one database play two hub replicas, on SQLite and on
PostgreSQL (a database of each test alone) when EDGEFLEET_TEST_POSTGRES_URL is set.

Acquire, renew, expiry and takeover run on an injected clock; the ``Singleton`` runner's failover on real time,
with a short TTL, and a holder cut off from the database that stops its job before its lease can expire."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.db.store import Store
from hub.errors import StoreError
from hub.leases import Fence, Grant, LeaseLost, Leases, Singleton
from hub.rollouts.controller import RolloutController
from hub.rollouts.plan import DeviceStatus
from tests.support.postgres_db import database_url
from tests.support.running import cancel_and_wait, wait_for
from tests.unit.hub.rollout_world import World, world
from tests.unit.hub.test_rollouts import stable

__all__ = ["world"]  # the fixture

TTL = 5.0


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as fresh:
        yield fresh


@pytest.fixture
def replicas(url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database: two hub replicas."""
    with Store(url) as one, Store(url) as two:
        yield one, two


def test_one_holder_at_a_time_takeover_after_expiry_and_a_stale_holder_cannot_renew(
    replicas: tuple[Store, Store],
) -> None:
    clock = Clock()
    a, b = (Leases(store, clock=clock) for store in replicas)
    first = a.acquire("rollouts", "a", TTL)
    assert first is not None
    assert (first.holder, first.epoch, first.expires_at) == ("a", 1, 1_005.0)
    assert b.acquire("rollouts", "b", TTL) is None  # held
    assert a.acquire("rollouts", "a2", TTL) is None  # another process of the same host is another holder

    clock.now = 1_004.0
    renewed = a.renew(first, TTL)
    assert renewed == Grant("rollouts", "a", 1, 1_009.0)  # same tenure, same epoch
    clock.now = 1_008.9
    assert b.acquire("rollouts", "b", TTL) is None  # renewed: still held
    assert b.current("rollouts") == renewed

    clock.now = 1_009.0  # expired (a stopped renewing: dead, or cut off from the database)
    assert a.renew(renewed, TTL) is None  # an expired lease is never renewed, only acquired again
    taken = b.acquire("rollouts", "b", TTL)
    assert taken == Grant("rollouts", "b", 2, 1_014.0)  # a new epoch: the fencing token
    assert a.renew(renewed, TTL) is None  # the stale holder stays out
    assert a.acquire("rollouts", "a", TTL) is None
    assert a.current("rollouts") == taken
    assert b.release(renewed) is False  # only the tenure that holds it can give it up

    # Leases are independent of each other.
    other = a.acquire("desired-renewal", "a", TTL)
    assert other is not None
    assert other.epoch == 1


def test_a_released_lease_is_taken_at_once(replicas: tuple[Store, Store]) -> None:
    clock = Clock()
    a, b = (Leases(store, clock=clock) for store in replicas)
    grant = a.acquire("rollouts", "a", TTL)
    assert grant is not None
    assert a.release(grant) is True
    assert a.current("rollouts") is None
    assert a.renew(grant, TTL) is None
    taken = b.acquire("rollouts", "b", TTL)
    assert taken is not None
    assert taken.epoch == 2


def test_many_replicas_racing_make_one_holder(replicas: tuple[Store, Store]) -> None:
    # The database's clock this time: 8 threads over the two stores try at once; one wins.
    stores = replicas
    start = threading.Barrier(8)
    won: list[Grant] = []

    def race(n: int) -> None:
        leases = Leases(stores[n % 2])
        start.wait()
        grant = leases.acquire("rollouts", f"r{n}", TTL)
        if grant is not None:
            won.append(grant)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1, won
    assert won[0].epoch == 1
    # By the database's clock, which is this host's: it expires TTL after now.
    assert abs(won[0].expires_at - (time.time() + TTL)) < 2.0


def test_a_fence_passes_for_the_holder_and_refuses_a_stale_one(replicas: tuple[Store, Store]) -> None:
    clock = Clock()
    a, b = (Leases(store, clock=clock) for store in replicas)
    old = a.acquire("rollouts", "a", TTL)
    assert old is not None
    with replicas[0].transaction("fenced write") as session:
        Fence(old)(session)
    clock.now += TTL
    new = b.acquire("rollouts", "b", TTL)
    assert new is not None
    with pytest.raises(LeaseLost, match="now held by b"), replicas[0].transaction("fenced write") as session:
        Fence(old)(session)
    with replicas[1].transaction("fenced write") as session:
        Fence(new)(session)


async def test_a_stale_controller_writes_nothing_even_when_its_snapshot_is_fresh(world: World) -> None:
    # The compare-and-set alone protects against a replica that read before another one wrote; the fence also
    # against a holder whose lease was taken over before anyone wrote: its snapshot is current, its write is not.
    w = world
    leases = Leases(w.store, clock=w.clock)
    old = leases.acquire("rollouts", "a", TTL)
    assert old is not None
    stale = RolloutController(w.store, w.publisher, clock=w.clock, fence=Fence(old))
    rid = w.start()
    decided = await stale.prepare(rid)
    assert decided is not None
    w.clock.advance(TTL)
    new = leases.acquire("rollouts", "b", TTL)
    assert new is not None
    assert not await stale.commit(*decided)  # lease over: rolled back
    assert w.progress(rid, "d1").status is DeviceStatus.PENDING
    assert w.get(rid).updated_at == w.get(rid).created_at

    holder = RolloutController(w.store, w.publisher, clock=w.clock, fence=Fence(new))
    decided = await holder.prepare(rid)
    assert decided is not None
    assert await holder.commit(*decided)
    assert w.progress(rid, "d1").status is DeviceStatus.ASSIGNED
    assert stable(w) == "initial"


class Watched(Leases):
    """Leases that count their calls and whose database stops answering while ``cut`` is set (a partition):
    calls then hang, and fail."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.acquires = self.renewals = 0
        self.last: Grant | None = None
        self.cut = threading.Event()
        self.healed = threading.Event()

    def _blocked(self) -> None:
        if self.cut.is_set():
            self.healed.wait(30)
            raise StoreError("renew lease", "connection timed out")

    def acquire(self, name: str, holder: str, ttl: float) -> Grant | None:
        self._blocked()
        self.acquires += 1
        self.last = super().acquire(name, holder, ttl) or self.last
        return self.last

    def renew(self, grant: Grant, ttl: float) -> Grant | None:
        self._blocked()
        renewed = super().renew(grant, ttl)
        if renewed is not None:
            self.renewals += 1
            self.last = renewed
        return renewed


class Job:
    """A job that records when it ran: the fences it got, whether it runs now, and when it was stopped."""

    def __init__(self) -> None:
        self.fences: list[Fence] = []
        self.running = False
        self.stopped_at: float | None = None

    async def __call__(self, fence: Fence) -> None:
        self.fences.append(fence)
        self.running = True
        try:
            await asyncio.Event().wait()
        finally:
            self.running = False
            self.stopped_at = time.time()


def singleton(leases: Leases, name: str, job: Job) -> Singleton:
    return Singleton(leases, "rollouts", job, holder=name, ttl=1.5, renew_every=0.2, stop_margin=0.3)


async def test_singletons_run_the_job_on_one_replica_and_hand_over_on_a_graceful_stop(
    replicas: tuple[Store, Store],
) -> None:
    jobs = {"a": Job(), "b": Job()}
    watched = Watched(replicas[1])
    a = singleton(Leases(replicas[0]), "a", jobs["a"])
    b = singleton(watched, "b", jobs["b"])
    task_a = asyncio.create_task(a.run())
    await wait_for(lambda: jobs["a"].running, what="a runs the job")
    task_b = asyncio.create_task(b.run())
    try:
        await wait_for(lambda: watched.acquires >= 5, what="b tries five times")
        assert not jobs["b"].running
        assert not b.held
        assert a.held
        assert jobs["a"].fences[0].grant.epoch == 1
        stopped = time.monotonic()
        await cancel_and_wait(task_a, what="a")  # a graceful stop releases the lease
        assert not jobs["a"].running
        assert not a.held
        await wait_for(lambda: jobs["b"].running, timeout=5, what="b takes over")
        assert time.monotonic() - stopped < 1.0  # released: no need to wait for the TTL
        assert jobs["b"].fences[0].grant.epoch == 2
    finally:
        for task in (task_a, task_b):
            await cancel_and_wait(task)


async def test_a_holder_cut_off_stops_its_job_before_expiry_and_another_takes_over(
    replicas: tuple[Store, Store],
) -> None:
    jobs = {"a": Job(), "b": Job()}
    leases_a = Watched(replicas[0])
    a = singleton(leases_a, "a", jobs["a"])
    b = singleton(Leases(replicas[1]), "b", jobs["b"])
    task_a = asyncio.create_task(a.run())
    await wait_for(lambda: jobs["a"].running, what="a runs the job")
    task_b = asyncio.create_task(b.run())
    try:
        await wait_for(lambda: leases_a.renewals >= 3, what="a renews three times")
        assert not jobs["b"].running
        leases_a.cut.set()  # a's renewals hang from now on
        cut_at = time.time()
        await wait_for(lambda: jobs["b"].running, timeout=5, what="b takes over")
        taken_at = time.time()
        assert leases_a.last is not None
        final = leases_a.last.expires_at  # a's last renewal
        assert jobs["a"].stopped_at is not None
        # Fencing in time: a stopped before its lease could expire, and b only started after it expired.
        assert jobs["a"].stopped_at < final
        assert not a.held
        assert taken_at >= final - 0.05
        assert taken_at - cut_at < 1.5 + 0.2 + 1.0  # ttl + one poll (+ slack for a loaded machine)
        assert jobs["b"].fences[0].grant.epoch == 2
    finally:
        leases_a.healed.set()
        for task in (task_a, task_b):
            await cancel_and_wait(task)
