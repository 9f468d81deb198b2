"""Group commit: many messages' writes in one transaction, isolation of a refused write, backpressure, close."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from edge_protocol.messages import Ack
from edge_protocol.topics import Topics
from hub.db.store import Store
from hub.errors import StoreError
from hub.fleet.devices import Devices, DeviceSeen
from hub.fleet.registry import Fleet, ReportedState
from hub.ingest.aggregates import Aggregates
from hub.ingest.consumer import Ingest
from hub.ingest.writes import BatchWrite, WriteQueue
from hub.mqtt.fake import FakeBus
from tests.unit.hub.factories import batch, record, reported, status

TOPICS = Topics("unit")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as opened:
        yield opened


class CountingStore:
    """Counts the transactions the queue opens on a real store, optionally failing those that hold a device."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.transactions = 0
        self.poisoned: str | None = None
        real_transaction = store.transaction
        real_insert = Aggregates.insert_batches

        def transaction(operation: str) -> Any:
            self.transactions += 1
            return real_transaction(operation)

        def insert_batches(aggregates: Aggregates, session: Session, batches: Any, now: float) -> list[dict[int, str]]:
            if any(device == self.poisoned for device, _ in batches):
                raise StoreError("store_batch", "refused by the database")
            return real_insert(aggregates, session, batches, now)

        monkeypatch.setattr(store, "transaction", transaction)
        monkeypatch.setattr(Aggregates, "insert_batches", insert_batches)


async def test_queued_writes_share_one_transaction(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingStore(store, monkeypatch)
    writes = WriteQueue(store, clock=lambda: 3000.0)
    futures = [await writes.put(BatchWrite(f"dev-{i}", [record(1, device=f"dev-{i}")])) for i in range(20)]
    futures.append(await writes.put(DeviceSeen("dev-0", 2900.0, False, "1.0.0")))
    futures.append(await writes.put(ReportedState(reported("dev-1", applied=3), 2950.0, 2950.0)))
    assert writes.queued == 22
    await writes.flush()
    assert [f.result() for f in futures] == [True] * 22
    assert counting.transactions == 1
    assert len(Aggregates(store).query(limit=None)) == 20
    devices = {d.id: d for d in Devices(store).all()}
    assert len(devices) == 20
    assert devices["dev-0"].online is False  # the status applied after the batch's "seen"
    assert devices["dev-0"].agent_version == "1.0.0"
    view = Fleet(store).device("dev-1")
    assert view is not None
    assert view.applied_version == 3


async def test_a_group_is_capped_in_records(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingStore(store, monkeypatch)
    writes = WriteQueue(store, max_group=5)  # two batches of 2 fit, a third does not
    for i in range(4):
        await writes.put(BatchWrite(f"dev-{i}", [record(s, device=f"dev-{i}", start=10.0 * s) for s in (1, 2)]))
    await writes.flush()
    assert counting.transactions == 2
    assert len(Aggregates(store).query(limit=None)) == 8


async def test_a_refused_write_does_not_take_its_group_down(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingStore(store, monkeypatch)
    counting.poisoned = "dev-bad"
    writes = WriteQueue(store)
    good = await writes.put(BatchWrite("dev-a", [record(1)]))
    bad = await writes.put(BatchWrite("dev-bad", [record(1, device="dev-bad")]))
    other = await writes.put(DeviceSeen("dev-c", 100.0, True, "1.0.0"))
    await writes.flush()
    assert (good.result(), bad.result(), other.result()) == (True, False, True)
    assert counting.transactions == 4  # the group, then each write on its own
    assert [a.device for a in Aggregates(store).query()] == ["dev-a"]


async def test_put_waits_for_room_and_close_fails_what_is_queued(store: Store) -> None:
    writes = WriteQueue(store, max_queued=2)
    first = await writes.put(BatchWrite("dev-a", [record(1), record(2, start=10.0)]))
    blocked = asyncio.create_task(writes.put(BatchWrite("dev-a", [record(3, start=20.0)])))
    await asyncio.sleep(0)  # one loop turn: the task is now waiting for room
    assert not blocked.done()
    runner = asyncio.create_task(writes.run())
    third = await asyncio.wait_for(blocked, 5)
    assert await asyncio.wait_for(first, 5) is True
    assert await asyncio.wait_for(third, 5) is True
    writes.close()
    await asyncio.wait_for(runner, 5)
    late = await writes.put(BatchWrite("dev-a", [record(4, start=30.0)]))
    assert late.result() is False
    assert len(Aggregates(store).query()) == 3


async def test_run_commits_a_burst_of_messages_in_few_transactions(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingStore(store, monkeypatch)
    bus = FakeBus()
    ingest = Ingest(store, bus, TOPICS, clock=lambda: 5000.0)
    devices = [f"dev-{i:03d}" for i in range(200)]
    for device in devices:  # queued before ingest reads any: the first group takes what is waiting
        bus.inject(TOPICS.status(device), status(device).model_dump_json())
        bus.inject(TOPICS.aggregates(device), batch(device, record(1, device=device)).model_dump_json())
    async with asyncio.timeout(20):
        task = asyncio.create_task(ingest.run())
        while len(bus.published) < len(devices):
            bus.new_publish.clear()
            await bus.new_publish.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    acks = [Ack.model_validate_json(p.payload) for p in bus.published]
    acked = {ack.device: ack.ranges for ack in acks}
    assert acked == {device: [(1, 1)] for device in devices}
    assert len(Aggregates(store).query(limit=None)) == len(devices)
    assert all(d.online for d in Devices(store).all())
    # 400 messages; per-message commits would be 400 transactions.
    assert counting.transactions < 100, counting.transactions
