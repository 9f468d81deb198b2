"""A backlog at the broker stays at the broker: a bounded session (MQTT 5 Receive Maximum, acknowledged as
its reader takes each message) holds at most its bound however much is waiting, and loses nothing.

- the session: 20,000 QoS 1 messages published to its persistent session while it is away, then read by a
  deliberately slow reader;
- the hub: ingest behind a store that does not commit, aggregates published faster than it stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import text

from edge_protocol.messages import Ack
from edge_protocol.topics import Topics
from hub.db.store import Store
from hub.ingest.consumer import Ingest
from hub.ingest.writes import WriteQueue
from hub.mqtt.broker import Broker
from mqtt_session import Backoff, Session
from scripts.mosquitto import Mosquitto
from tests.integration.test_hub_ingest import make_batch
from tests.support.running import cancel_and_wait, hub_config, wait_for

pytestmark = pytest.mark.integration

BACKLOG = 20_000
BOUND = 1
"""The bound mosquitto 2.0 keeps to (see mqtt_session.session); the hub's default."""


@pytest.fixture
def broker(fresh_broker: Callable[..., Mosquitto]) -> Mosquitto:
    return fresh_broker()


@contextlib.contextmanager
def publisher(broker: Mosquitto) -> Iterator[mqtt.Client]:
    """A paho client on its own thread, no limit on its messages in flight."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish_all(client: mqtt.Client, messages: list[tuple[str, bytes]], timeout: float = 60.0) -> None:
    """Publish at QoS 1 and return once the broker acknowledged every one."""
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    deadline = time.monotonic() + timeout
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert info.is_published(), "the broker did not acknowledge a publish in time"


def bounded_session(broker: Mosquitto, receive_maximum: int | None) -> Session:
    return Session(
        broker.host,
        broker.port,
        client_id="backlog-reader",
        clean_start=False,
        session_expiry=600,
        receive_maximum=receive_maximum,
        backoff=Backoff(0.05, 0.5),
        call_timeout=10.0,
    )


async def slow_reader(session: Session, received: list[bytes], want: int) -> None:
    """Take messages until ``want`` distinct payloads came, yielding the loop several times per message:
    a consumer slower than the network (paho reads one packet per loop turn)."""
    seen: set[bytes] = set()
    async with contextlib.aclosing(session.messages()) as messages:
        async for message in messages:
            received.append(message.payload)
            seen.add(message.payload)
            if len(seen) == want:
                return
            for _ in range(4):
                await asyncio.sleep(0)


async def test_a_bounded_session_holds_at_most_its_bound_of_a_backlog_and_gets_all_of_it(broker: Mosquitto) -> None:
    # The persistent session exists at the broker, with its subscription, while its client is away.
    async with bounded_session(broker, BOUND) as away:
        await away.subscribe("backlog/#", qos=1)
        await away.wait_connected()
    payloads = [f"{i}".encode() for i in range(BACKLOG)]
    with publisher(broker) as pub:
        await asyncio.to_thread(publish_all, pub, [(f"backlog/{i % 10}", p) for i, p in enumerate(payloads)])

    session = bounded_session(broker, BOUND)
    received: list[bytes] = []
    async with session:
        await asyncio.wait_for(slow_reader(session, received, BACKLOG), timeout=120)
    assert set(received) == set(payloads)  # none lost (a redelivery may come twice)
    assert session.high_water <= BOUND, f"the queue held {session.high_water} messages, the bound is {BOUND}"


async def test_an_unbounded_session_reads_the_whole_backlog_into_its_queue(broker: Mosquitto) -> None:
    """The behaviour the agent and the simulator keep, and why the hub needs the bound."""
    async with bounded_session(broker, None) as away:
        await away.subscribe("backlog/#", qos=1)
        await away.wait_connected()
    payloads = [f"{i}".encode() for i in range(5_000)]
    with publisher(broker) as pub:
        await asyncio.to_thread(publish_all, pub, [("backlog/x", p) for p in payloads])
    session = bounded_session(broker, None)
    received: list[bytes] = []
    async with session:
        await asyncio.wait_for(slow_reader(session, received, len(payloads)), timeout=60)
    assert set(received) == set(payloads)
    assert session.high_water > 100


async def test_messages_a_lost_connection_left_in_the_queue_are_kept_and_the_bound_holds(broker: Mosquitto) -> None:
    async with bounded_session(broker, BOUND) as away:
        await away.subscribe("backlog/#", qos=1)
        await away.wait_connected()
    payloads = [f"{i}".encode() for i in range(2_000)]
    with publisher(broker) as pub:
        await asyncio.to_thread(publish_all, pub, [("backlog/x", p) for p in payloads])
    session = bounded_session(broker, BOUND)
    received: list[bytes] = []
    async with session:
        # Nobody reads: the queue fills to the bound and the broker keeps the rest.
        await wait_for(lambda: session.pending == BOUND, timeout=20, what="a full queue")
        broker.restart()  # the connection is lost with the queue full
        await wait_for(lambda: session.connects >= 2 or session.last_error is not None, timeout=20, what="the loss")
        await asyncio.wait_for(slow_reader(session, received, len(payloads)), timeout=60)
    assert set(received) == set(payloads)
    assert session.connects >= 2
    assert session.high_water < 2 * BOUND


# -- the hub ---------------------------------------------------------------------------------------------------


class GatedStore(Store):
    """A store whose ingest transactions wait for ``gate``: a hub that cannot commit yet."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()

    @contextlib.contextmanager
    def transaction(self, name: str) -> Iterator[Any]:
        if name == "ingest":
            assert self.gate.wait(60), "the test never opened the gate"
        with super().transaction(name) as session:
            yield session


@contextlib.asynccontextmanager
async def ingest(store: Store, broker: Broker, topics: Topics) -> AsyncIterator[Ingest]:
    # A small write queue, so that ingest stops reading soon: the bound in front of it is what is tested.
    consumer = Ingest(store, broker, topics, writes=WriteQueue(store, max_group=500, max_queued=200))
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: consumer.ready.is_set() or task.done(), timeout=20, what="ingest ready")
        yield consumer
    finally:
        store_gate = getattr(store, "gate", None)
        if store_gate is not None:
            store_gate.set()
        await cancel_and_wait(task, what="ingest")


async def test_the_hub_leaves_a_backlog_at_the_broker_while_it_cannot_store(
    broker: Mosquitto, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    config = hub_config(broker, topic_prefix, tmp_path / "hub.db").broker.model_copy(update={"receive_maximum": BOUND})
    devices, batches, per_batch = 10, 100, 5
    messages: list[tuple[str, bytes]] = []
    for d in range(devices):
        device = f"dev{d}"
        for b in range(batches):
            batch = make_batch(device, list(range(b * per_batch + 1, (b + 1) * per_batch + 1)))
            messages.append((topics.aggregates(device), batch.model_dump_json().encode()))
    acked: dict[str, set[int]] = {f"dev{d}": set() for d in range(devices)}

    def on_ack(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        ack = Ack.model_validate_json(msg.payload)
        for first, last in ack.ranges:
            acked[ack.device].update(range(first, last + 1))

    store = GatedStore(f"sqlite:///{tmp_path / 'hub.db'}")
    async with store, Broker(config, backoff=Backoff(0.05, 0.5)) as hub_broker, ingest(store, hub_broker, topics):
        with publisher(broker) as pub:
            pub.on_message = on_ack
            pub.subscribe(topics.all_devices("acks"), qos=1)
            await asyncio.to_thread(publish_all, pub, messages)
            # Ingest is stuck behind its full write queue: the queue in front of it fills to the bound, no more.
            await wait_for(lambda: hub_broker.pending == BOUND, timeout=20, what="a full queue in front of ingest")
            store.gate.set()
            want = batches * per_batch
            await wait_for(
                lambda: all(len(seqs) == want for seqs in acked.values()),
                timeout=60,
                what="every record acked",
                detail=lambda: {d: len(s) for d, s in acked.items()},
            )
        assert hub_broker.high_water <= BOUND, f"{hub_broker.high_water} messages queued, the bound is {BOUND}"
        with store.transaction("count") as session:
            stored = session.execute(text("SELECT count(*) FROM aggregates")).scalar_one()
    assert stored == devices * batches * per_batch
