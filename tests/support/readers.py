"""Reading what the agent and the hub hold without being them: the outbox, the hub's store, the hub's API.

Readers open the agent's outbox and the hub's store with their own SQLite connections: both are in WAL mode,
so reading while the owner writes (or after it was killed) is safe.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import httpx


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def integrity_check(path: Path) -> str:
    """``PRAGMA integrity_check`` of a SQLite file (opened read-write, as its owner would reopen it)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def outbox_pending(path: Path) -> int:
    with contextlib.closing(_read_only(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def outbox_results(path: Path) -> list[dict[str, Any]]:
    """The window results waiting in an outbox (its records' bodies)."""
    with contextlib.closing(_read_only(path)) as db:
        return [json.loads(body) for (body,) in db.execute("SELECT body FROM records ORDER BY seq")]


def outbox_losses(path: Path) -> dict[tuple[str, str], int]:
    with contextlib.closing(_read_only(path)) as db:
        return {(s, r): int(n) for s, r, n in db.execute("SELECT subscription, reason, count FROM losses")}


async def hub_device(api: httpx.AsyncClient, device: str) -> dict[str, Any]:
    """``GET /v1/devices/{device}``: the device as the hub shows it (reported counters, ``losses``, ``alarms``);
    empty before the hub has heard from it."""
    response = await api.get(f"/v1/devices/{device}")
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    return dict(response.json())


async def reported_since(api: httpx.AsyncClient, device: str, since: float) -> dict[str, Any]:
    """:func:`hub_device` once the hub holds a reported state the agent made at ``since`` (its clock) or later;
    empty until then (an older report, e.g. the retained one from before a fault, does not count)."""
    shown = await hub_device(api, device)
    return shown if (shown.get("reported_at") or 0.0) >= since else {}


def hub_rows(path: Path, device: str) -> list[dict[str, Any]]:
    """Every stored window of ``device`` (window_id, group, window_start, events, fields), from the store."""
    if not path.exists():
        return []
    with contextlib.closing(_read_only(path)) as db:
        try:
            rows = db.execute(
                'SELECT window_id, "group", window_start, events, fields FROM aggregates WHERE device = ?', (device,)
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
    return [
        {"window_id": w, "group": g, "window_start": float(t), "events": int(e), "fields": json.loads(f)}
        for w, g, t, e, f in rows
    ]


class Totals:
    """Sums over stored windows: rows, distinct ids, events, and the count/sum/min/max of one field."""

    def __init__(self, rows: list[dict[str, Any]], field: str | None = None) -> None:
        self.rows = len(rows)
        self.distinct = len({r.get("window_id") or r["id"] for r in rows})  # store rows or outbox bodies
        self.events = sum(r["events"] for r in rows)
        states = [r["fields"][field] for r in rows if field and field in r["fields"]]
        self.count = sum(s["count"] for s in states)
        self.sum = math.fsum(s["sum"] for s in states)
        self.min = min((s["min"] for s in states), default=math.inf)
        self.max = max((s["max"] for s in states), default=-math.inf)

    def __repr__(self) -> str:
        return f"Totals(rows={self.rows}, distinct={self.distinct}, events={self.events}, count={self.count})"
