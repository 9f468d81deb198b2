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
    """Sums over stored windows: rows, events, and the count/sum/min/max of one field.

    No "distinct window ids": the store's primary key is the window id, so rows always equal distinct ids;
    what shows a window stored twice or lost is :func:`assert_events_per_group` and :func:`assert_stored_as_held`.
    """

    def __init__(self, rows: list[dict[str, Any]], field: str | None = None) -> None:
        self.rows = len(rows)
        self.events = sum(r["events"] for r in rows)
        states = [r["fields"][field] for r in rows if field and field in r["fields"]]
        self.count = sum(s["count"] for s in states)
        self.sum = math.fsum(s["sum"] for s in states)
        self.min = min((s["min"] for s in states), default=math.inf)
        self.max = max((s["max"] for s in states), default=-math.inf)

    def __repr__(self) -> str:
        return f"Totals(rows={self.rows}, events={self.events}, count={self.count})"


def group_of(topic: str) -> str:
    """The group a ``{prefix}/sensors/sN/temperature`` reading falls in under ``group_by = ["topic[2]"]``."""
    return f"topic[2]={topic.split('/')[2]}"


def per_group(rows: list[dict[str, Any]], field: str = "c") -> dict[str, tuple[int, int, float]]:
    """group -> (events, the field's count, the field's sum) summed over stored windows."""
    out: dict[str, tuple[int, int, float]] = {}
    for group in sorted({r["group"] for r in rows}):
        mine = [r for r in rows if r["group"] == group]
        states = [r["fields"][field] for r in mine if field in r["fields"]]
        out[group] = (
            sum(r["events"] for r in mine),
            sum(s["count"] for s in states),
            math.fsum(s["sum"] for s in states),
        )
    return out


def assert_events_per_group(
    rows: list[dict[str, Any]],
    messages: list[tuple[str, bytes]],
    values: list[float],
    field: str = "c",
    *,
    at_least: bool = False,
) -> None:
    """Per group key, the stored windows hold exactly the published events: their event counts add up to the
    readings published in that group, and the field's count and sum to theirs. A window stored twice (under
    any id) or dropped changes a group's figures; comparing rows with distinct window ids cannot see either.
    ``at_least``: where the test allows duplicates, no group may hold fewer events than were published in it."""
    published: dict[str, list[float]] = {}
    for (topic, _), value in zip(messages, values, strict=False):
        published.setdefault(group_of(topic), []).append(value)
    stored = per_group(rows, field)
    assert sorted(stored) == sorted(published), f"groups stored {sorted(stored)}, published {sorted(published)}"
    for group, sent in published.items():
        events, count, total = stored[group]
        if at_least:
            assert events >= len(sent), f"{group}: stored {events} events of {len(sent)}"
            assert count == events, f"{group}: {count} values in {events} events"
            continue
        assert (events, count) == (len(sent), len(sent)), f"{group}: stored {events} events ({count}) of {len(sent)}"
        assert math.isclose(total, math.fsum(sent), rel_tol=1e-9, abs_tol=1e-6), f"{group}: sum {total}"


def assert_stored_as_held(rows: list[dict[str, Any]], held: list[dict[str, Any]]) -> None:
    """Each stored window is, field for field, a window result the agent held (its outbox bodies, or what it
    sent): same id, events and field states; and no stored window lacks its original."""
    originals: dict[str, list[dict[str, Any]]] = {}
    for result in held:
        originals.setdefault(result["id"], []).append(result)
    for row in rows:
        versions = originals.get(row["window_id"], [])
        assert versions, f"{row['window_id']} stored, but the agent never held it"
        assert all((v["events"], v["fields"]) == (versions[0]["events"], versions[0]["fields"]) for v in versions), (
            f"{row['window_id']} held with different contents"
        )
        assert (row["events"], row["fields"]) == (versions[0]["events"], versions[0]["fields"]), (
            f"{row['window_id']} stored with other content than held: {row} vs {versions[0]}"
        )
