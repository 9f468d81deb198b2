"""inventory: keeps stock per SKU in memory, publishes each new level and low-stock alerts.

Consumes events on ``<TOPIC_PREFIX>/shop/events/+`` (subscribe the handler there):
  ``{"type": "OrderPlaced", "order_id": ..., "sku": ..., "qty": N}``  takes N off the SKU's stock;
  ``{"type": "StockReceived", "sku": ..., "qty": N}``                  adds N (a new SKU starts at 0).
An order for an unknown SKU or for more than is left raises ValueError (the agent dead-letters it) and leaves
the stock unchanged. Env: INITIAL_STOCK (JSON object sku -> count, default {}), LOW_STOCK_THRESHOLD
(default 10), TOPIC_PREFIX (default empty).
Publishes, for every accepted event:
  ``<prefix>/shop/stock/<sku>``        ``{"sku": ..., "stock": n}``, QoS 1, retained (the current level);
  ``<prefix>/shop/alerts/low-stock``   ``{"type": "LowStock", "sku", "stock", "threshold", "order_id"}``, QoS 1,
                                       once per crossing: when the level goes from >= threshold to below it.
                                       A restock back to >= threshold re-arms the alert.
Values: ``{"remaining": n, "qty": N, "sku": "<sku>"}``: group the subscription by ``sku``.
The stock lives in this container's memory: a restart of the handler starts again from INITIAL_STOCK.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from edge_handler import Event, HandlerResult, Publish, run

PREFIX = os.environ.get("TOPIC_PREFIX", "").strip("/")


def _topic(suffix: str) -> str:
    return f"{PREFIX}/{suffix}" if PREFIX else suffix


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _load_config() -> tuple[dict[str, int], int]:
    try:
        initial = json.loads(os.environ.get("INITIAL_STOCK", "{}"))
        threshold = int(os.environ.get("LOW_STOCK_THRESHOLD", "10"))
    except ValueError as exc:
        sys.exit(f"inventory: bad INITIAL_STOCK or LOW_STOCK_THRESHOLD: {exc}")
    if not isinstance(initial, dict) or not all(isinstance(k, str) and _count(v) for k, v in initial.items()):
        sys.exit("inventory: INITIAL_STOCK must be a JSON object of sku -> non-negative integer")
    return dict(initial), threshold


STOCK, THRESHOLD = _load_config()
LOW_STOCK = _topic("shop/alerts/low-stock")


def _event(payload: Any) -> tuple[str, str, int]:
    """(type, sku, qty) of a well-formed event, or ValueError."""
    if not isinstance(payload, dict):
        raise ValueError(f"an event is a JSON object, got {type(payload).__name__}")
    kind, sku, qty = payload.get("type"), payload.get("sku"), payload.get("qty")
    if kind not in ("OrderPlaced", "StockReceived"):
        raise ValueError(f"unknown event type {kind!r:.80}")
    if not isinstance(sku, str) or not sku or "/" in sku or "+" in sku or "#" in sku:
        raise ValueError(f"{kind}: bad sku {sku!r:.80}")
    if not _count(qty) or qty == 0:
        raise ValueError(f"{kind}: qty must be a positive integer, got {qty!r:.80}")
    return kind, sku, qty


def handle(event: Event) -> HandlerResult:
    kind, sku, qty = _event(event.payload)
    before = STOCK.get(sku)
    if kind == "OrderPlaced":
        order_id = event.payload.get("order_id")
        if before is None:
            raise ValueError(f"order {order_id}: unknown sku {sku!r}")
        if qty > before:
            raise ValueError(f"order {order_id}: insufficient stock for {sku}: {qty} ordered, {before} left")
        after = before - qty
    else:
        order_id = None
        before = before or 0
        after = before + qty
    STOCK[sku] = after
    publish = [Publish(_topic(f"shop/stock/{sku}"), {"sku": sku, "stock": after}, qos=1, retain=True)]
    if before >= THRESHOLD > after:
        alert = {"type": "LowStock", "sku": sku, "stock": after, "threshold": THRESHOLD, "order_id": order_id}
        publish.append(Publish(LOW_STOCK, alert, qos=1))
    return HandlerResult({"remaining": after, "qty": qty, "sku": sku}, publish=publish)


if __name__ == "__main__":
    run(handle)
