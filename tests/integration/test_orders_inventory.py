"""Issue 5's local-routing example end to end: orders -> OrderPlaced on a local topic -> inventory -> stock
levels (retained) and low-stock alerts, both handlers real containers, driven by a stream of orders.

The test keeps its own model of the stock. Orders come from one publisher on one topic, the orders handler
republishes them in order and the inventory subscription sees them in that order, so the model's sequential
replay gives exactly the final stock, the alerts (with the order that caused each) and the rejections.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import orjson
import paho.mqtt.client as mqtt
import pytest

from edge_agent.config import AgentConfig, load_config
from edge_protocol.deadletter import DeadLetter
from scripts.mosquitto import Mosquitto
from tests.support.engine import ensure_handler_images
from tests.support.mqtt_clients import publish_all
from tests.support.running import running_agent, wait_for

pytestmark = pytest.mark.integration

IMAGES = ("edgefleet/orders:dev", "edgefleet/inventory:dev")
INITIAL_STOCK = {"apple": 650, "pear": 200, "plum": 220, "fig": 280}
THRESHOLD = 25
RESTOCK = {"pear": 150, "plum": 100}


@pytest.fixture(scope="module")
def shop_images(docker_client: docker.DockerClient) -> dict[str, str]:
    return ensure_handler_images(docker_client, IMAGES)


class Collector:
    """A subscriber that keeps every message (topic, payload, retain flag) on some filters, in arrival order."""

    def __init__(self, broker: Mosquitto, filters: list[str]) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.connect(broker.host, broker.port)
        self._client.subscribe([(f, 1) for f in filters])
        self._client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return [m for m in self.messages if m[0].endswith(suffix)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def retained_now(broker: Mosquitto, topic_filter: str, settle: float = 1.0) -> dict[str, bytes]:
    """The retained messages on ``topic_filter`` as a new subscriber gets them (topic -> payload)."""
    collector = Collector(broker, [topic_filter])
    try:
        threading.Event().wait(settle)
        return {topic: payload for topic, payload, retain in collector.messages if retain}
    finally:
        collector.close()


@dataclass
class Shop:
    """The test's model of the inventory handler, replayed in the order events reach it."""

    stock: dict[str, int] = field(default_factory=lambda: dict(INITIAL_STOCK))
    alerts: list[tuple[str, int, str | None]] = field(default_factory=list)  # (sku, stock, order_id)
    rejected: dict[str, str] = field(default_factory=dict)  # order_id -> expected detail fragment
    accepted: dict[str, int] = field(default_factory=dict)  # sku -> units sold
    events: int = 0  # events that reach the inventory subscription

    def order(self, order_id: str, sku: str, qty: int) -> None:
        self.events += 1
        left = self.stock.get(sku)
        if left is None:
            self.rejected[order_id] = "unknown sku"
        elif qty > left:
            self.rejected[order_id] = "insufficient stock"
        else:
            self._set(sku, left - qty, order_id)
            self.accepted[sku] = self.accepted.get(sku, 0) + qty

    def restock(self, sku: str, qty: int) -> None:
        self.events += 1
        self._set(sku, self.stock.get(sku, 0) + qty, None)

    def _set(self, sku: str, after: int, order_id: str | None) -> None:
        before = self.stock.get(sku, 0)
        self.stock[sku] = after
        if before >= THRESHOLD > after:
            self.alerts.append((sku, after, order_id))


# Invalid orders, each rejected by the orders handler (or by the agent: not JSON) with its own reason.
INVALID: list[tuple[bytes, str, str]] = [  # payload, dead-letter reason, detail fragment
    (b"not json at all", "invalid-json", ""),
    (b'["o", "apple", 1]', "handler-error", "JSON object"),
    (b'{"sku": "apple", "qty": 1}', "handler-error", "order_id"),
    (b'{"order_id": "bad-sku", "sku": "app/le", "qty": 1}', "handler-error", "sku must match"),
    (b'{"order_id": "zero", "sku": "apple", "qty": 0}', "handler-error", "qty must be"),
    (b'{"order_id": "text-qty", "sku": "apple", "qty": "3"}', "handler-error", "qty must be"),
    (b'{"order_id": "float-qty", "sku": "pear", "qty": 2.5}', "handler-error", "qty must be"),
    (b'{"order_id": "bool-qty", "sku": "pear", "qty": true}', "handler-error", "qty must be"),
]


def _orders(rng: random.Random, shop: Shop, start: int, count: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` order payloads, about 5% invalid and a few far beyond any stock; the model follows along."""
    skus = list(INITIAL_STOCK)
    weights = [5, 3, 3, 2]
    payloads: list[bytes] = []
    invalid: list[bytes] = []
    for i in range(start, start + count):
        if i % 20 == 7:
            raw = INVALID[(i // 20) % len(INVALID)][0]
            payloads.append(raw)
            invalid.append(raw)
            continue
        order_id = f"o{i:04d}"
        sku = "kiwi" if i % 97 == 50 else rng.choices(skus, weights)[0]
        qty = 5000 if i % 45 == 30 else rng.randint(1, 6)
        shop.order(order_id, sku, qty)
        payloads.append(orjson.dumps({"order_id": order_id, "sku": sku, "qty": qty, "note": "x" * (i % 3)}))
    return payloads, invalid


def _config(device_id: str, data_dir: Path, port: int, prefix: str) -> AgentConfig:
    env = {"TOPIC_PREFIX": prefix}
    return load_config(
        None,
        device_id=device_id,
        data_dir=data_dir,
        local_broker={"port": port},
        # No hub: the cloud prefix still names the dead-letter topics ({prefix}/deadletter/<subscription>).
        cloud={"enabled": False, "prefix": prefix},
        handlers=[
            {"name": "orders", "image": "edgefleet/orders:dev", "env": env},
            {
                "name": "inventory",
                "image": "edgefleet/inventory:dev",
                "env": {
                    **env,
                    "INITIAL_STOCK": json.dumps(INITIAL_STOCK),
                    "LOW_STOCK_THRESHOLD": str(THRESHOLD),
                },
            },
        ],
        subscriptions=[
            {"name": "orders", "topic": f"{prefix}/shop/orders", "handler": "orders", "group_by": ["sku"],
             "window": {"size": "2s"}, "stats": ["count", "sum"]},
            {"name": "inventory", "topic": f"{prefix}/shop/events/+", "handler": "inventory", "group_by": ["sku"],
             "window": {"size": "2s"}, "stats": ["count", "min", "last"]},
        ],
        grace_period=5,
    )


async def test_orders_feed_inventory_stock_alerts_and_dead_letters(
    device_broker: Mosquitto,
    shop_images: dict[str, str],
    docker_client: docker.DockerClient,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    p = topic_prefix
    rng = random.Random(5)
    shop = Shop()
    # Phase 1 takes pear below the threshold and out of stock, the restock re-arms its alert, phase 2 crosses
    # again; every SKU ends below the threshold, two at zero with orders refused for want of stock.
    phase1, invalid1 = _orders(rng, shop, 0, 300)
    phase1_events = shop.events
    restocks = list(RESTOCK.items())
    for sku, qty in restocks:
        shop.restock(sku, qty)
    phase2, invalid2 = _orders(rng, shop, 300, 200)
    invalid = invalid1 + invalid2
    valid_orders = len(phase1) + len(phase2) - len(invalid)
    assert max(Counter(sku for sku, _s, _o in shop.alerts).values()) == 2, "a SKU must cross twice"
    assert sum(d == "insufficient stock" for d in shop.rejected.values()) >= 10
    assert "unknown sku" in shop.rejected.values()

    collector = Collector(device_broker, [f"{p}/shop/alerts/low-stock", f"{p}/deadletter/#"])
    config = _config(device_id, tmp_path / "agent", device_broker.port, p)
    try:
        async with running_agent(config) as (state, agent_task):
            orders_c = state.dispatchers["orders"].counters
            inv_c = state.dispatchers["inventory"].counters

            def done(c: Any, n: int) -> bool:
                return bool(c.processed + sum(c.dead_lettered.values()) >= n)

            def progress() -> str:
                return f"counters={state.counters()}"

            await asyncio.to_thread(publish_all, device_broker, [(f"{p}/shop/orders", x) for x in phase1])
            await wait_for(lambda: done(inv_c, phase1_events) and done(orders_c, len(phase1)), timeout=60,
                           what="phase 1 through both handlers", detail=progress)

            restock_msgs = [(f"{p}/shop/events/stock-received",
                             orjson.dumps({"type": "StockReceived", "sku": sku, "qty": qty})) for sku, qty in restocks]
            await asyncio.to_thread(publish_all, device_broker, restock_msgs)
            await wait_for(lambda: done(inv_c, phase1_events + len(restocks)), timeout=30, what="restocks",
                           detail=progress)

            await asyncio.to_thread(publish_all, device_broker, [(f"{p}/shop/orders", x) for x in phase2])
            await wait_for(lambda: done(inv_c, shop.events) and done(orders_c, len(phase1) + len(phase2)),
                           timeout=60, what="phase 2 through both handlers", detail=progress)
            dead_letters = len(invalid) + len(shop.rejected)
            await wait_for(lambda: len(collector.on("")) >= dead_letters + len(shop.alerts), timeout=30,
                           what="dead letters and alerts", detail=lambda: len(collector.messages))
            await asyncio.sleep(0.5)  # anything extra (a duplicate alert) would arrive by now

            # Counters: every order is either processed or dead-lettered, nothing dropped.
            assert orders_c.processed == valid_orders
            reasons = {raw: reason for raw, reason, _fragment in INVALID}
            assert orders_c.dead_lettered == Counter(reasons[raw] for raw in invalid)
            assert orders_c.published == valid_orders
            assert inv_c.processed == shop.events - len(shop.rejected)
            assert dict(inv_c.dead_lettered) == {"handler-error": len(shop.rejected)}
            assert orders_c.dropped_overflow == inv_c.dropped_overflow == 0

            # Final stock: the retained level of each SKU is the initial stock minus what the model accepted
            # (plus restocks).
            stock = await asyncio.to_thread(retained_now, device_broker, f"{p}/shop/stock/+")
            assert {t.rsplit("/", 1)[1]: json.loads(v)["stock"] for t, v in stock.items()} == shop.stock
            for sku, initial in INITIAL_STOCK.items():
                assert shop.stock[sku] == initial + RESTOCK.get(sku, 0) - shop.accepted.get(sku, 0)

            # Alerts: exactly one per crossing, in order, naming the order that crossed.
            alerts = [json.loads(m[1]) for m in collector.on("/shop/alerts/low-stock")]
            assert [(a["sku"], a["stock"], a["order_id"]) for a in alerts] == shop.alerts
            assert all(a["type"] == "LowStock" and a["threshold"] == THRESHOLD for a in alerts)

            # Dead letters: the invalid orders on the orders subscription, the refused ones on inventory.
            records = [DeadLetter.model_validate_json(m[1]) for m in collector.on("") if "/deadletter/" in m[0]]
            on_orders = [d for d in records if d.subscription == "orders"]
            on_inventory = [d for d in records if d.subscription == "inventory"]
            assert sorted(d.payload_bytes() for d in on_orders) == sorted(invalid)
            expected = {raw: (reason, fragment) for raw, reason, fragment in INVALID}
            for d in on_orders:
                reason, fragment = expected[d.payload_bytes()]
                assert d.reason == reason, d
                assert fragment in d.detail, d
                assert d.detail, d
                assert d.topic == f"{p}/shop/orders"
                assert d.handler == "orders"
            refused = {json.loads(d.payload)["order_id"]: d for d in on_inventory}
            assert len(refused) == len(on_inventory) == len(shop.rejected)
            assert set(refused) == set(shop.rejected)
            for order_id, fragment in shop.rejected.items():
                d = refused[order_id]
                assert d.reason == "handler-error", d
                assert fragment in d.detail, d
                assert order_id in d.detail, d
                assert d.topic == f"{p}/shop/events/order-placed"
                assert d.handler == "inventory"
            assert not agent_task.done(), "the agent must still be running"
    finally:
        collector.close()
        # The shared broker keeps retained messages for the whole run: leave none behind.
        await asyncio.to_thread(publish_all, device_broker,
                                [(f"{p}/shop/stock/{sku}", b"") for sku in INITIAL_STOCK])

