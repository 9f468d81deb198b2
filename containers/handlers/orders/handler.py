"""orders: validates incoming orders and turns each accepted one into an ``OrderPlaced`` event.

Payload: ``{"order_id": "<text>", "sku": "<name>", "qty": <int >= 1>}`` (other fields are ignored).
Values: ``{"qty": N}``; group a subscription by the payload field ``sku`` to sum quantities per SKU.
Publishes (QoS 1) ``{"type": "OrderPlaced", "order_id": ..., "sku": ..., "qty": ...}`` on
``<TOPIC_PREFIX>/shop/events/order-placed`` (``shop/events/order-placed`` when TOPIC_PREFIX is empty).
An invalid order raises ValueError: the agent dead-letters it with the reason, and nothing is published.
"""

from __future__ import annotations

import os
import re
from typing import Any

from edge_handler import Event, HandlerResult, Publish, run

PREFIX = os.environ.get("TOPIC_PREFIX", "").strip("/")
ORDER_PLACED = f"{PREFIX}/shop/events/order-placed" if PREFIX else "shop/events/order-placed"
MAX_QTY = int(os.environ.get("MAX_QTY", "1000000"))
# A SKU becomes a topic level downstream (shop/stock/<sku>): no '/', '+', '#' or spaces.
SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_order(payload: Any) -> tuple[str, str, int]:
    """(order_id, sku, qty) of a valid order, or ValueError saying what is wrong with it."""
    if not isinstance(payload, dict):
        raise ValueError(f"an order is a JSON object, got {type(payload).__name__}")
    order_id, sku, qty = payload.get("order_id"), payload.get("sku"), payload.get("qty")
    if not isinstance(order_id, str) or not 0 < len(order_id) <= 128:
        raise ValueError(f"order_id must be a non-empty string of at most 128 characters, got {order_id!r:.80}")
    if not isinstance(sku, str) or not SKU.match(sku):
        raise ValueError(f"order {order_id}: sku must match {SKU.pattern}, got {sku!r:.80}")
    # bool is an int subclass, and 2.0 is no count of items.
    if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
        raise ValueError(f"order {order_id}: qty must be an integer from 1 to {MAX_QTY}, got {qty!r:.80}")
    return order_id, sku, qty


def handle(event: Event) -> HandlerResult:
    order_id, sku, qty = parse_order(event.payload)
    placed = {"type": "OrderPlaced", "order_id": order_id, "sku": sku, "qty": qty}
    return HandlerResult({"qty": qty}, publish=[Publish(ORDER_PLACED, placed, qos=1)])


if __name__ == "__main__":
    run(handle)
