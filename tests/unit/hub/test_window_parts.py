"""The parts of one window (a subscription on several intake workers): stored as rows of their own, exactly once
per part id, and shown merged as one window whose statistics are the unsplit window's."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.aggregation.windows import WindowSet
from edge_protocol.aggregate import WindowResult
from edge_protocol.messages import SequencedResult
from edge_protocol.specs import SubscriptionSpec
from hub.api.app import create_app
from hub.db.store import Store
from hub.ingest.aggregates import Aggregates

T0 = 1_200.0
SPEC = SubscriptionSpec(
    name="meters", topic="m/+", handler="h", workers=2, window={"size": 10.0},
    stats=["count", "sum", "min", "max", "mean", "stddev", "first", "last", "p50", "p99"],
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as opened:
        yield opened


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, clock=lambda: T0 + 3600)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield client


def windows(events: list[tuple[str, float, float]], part: int) -> list[WindowResult]:
    """The closed windows of ``events`` (group, value, time) as worker ``part`` emits them."""
    ws = WindowSet(SPEC, "dev1", part)
    for group, value, ts in events:
        assert ws.add(group, {"v": value}, ts)
    return ws.close_due(T0 + 100)


def split(rng: random.Random, n: int) -> tuple[list[tuple[str, float, float]], list[list[tuple[str, float, float]]]]:
    """``n`` events over two windows and two groups, and the same events dealt to two workers at random."""
    events = [(f"g{i % 2}", rng.lognormvariate(0, 2) * rng.choice((1, -1)), T0 + 20 * i / n) for i in range(n)]
    parts: list[list[tuple[str, float, float]]] = [[], []]
    for event in events:
        parts[rng.randrange(2)].append(event)
    return events, parts


def store_results(store: Store, results: list[WindowResult]) -> list[int]:
    records = [SequencedResult(seq=i + 1, result=r) for i, r in enumerate(results)]
    return Aggregates(store).store_batch("dev1", records, now=T0 + 50)


def test_a_workers_windows_carry_its_part_in_id_and_record() -> None:
    (zero,) = windows([("g", 1.0, T0)], 0)
    (one,) = windows([("g", 1.0, T0)], 1)
    assert (zero.part, one.part) == (0, 1)
    assert zero.id.endswith(f"/g/{T0:.3f}/0")
    assert one.id == zero.id[:-1] + "1"


def test_workers_one_leaves_the_spec_and_its_revision_as_they_were() -> None:
    one = SubscriptionSpec(name="s", topic="t/#", handler="h")
    assert "workers" not in one.model_dump_json()
    assert one.revision == SubscriptionSpec(name="s", topic="t/#", handler="h", workers=1).revision
    two = SubscriptionSpec(name="s", topic="t/#", handler="h", workers=2)
    assert two.revision != one.revision, "a change of the worker count starts new window ids"
    assert SubscriptionSpec.model_validate_json(two.model_dump_json()).workers == 2


@pytest.mark.parametrize("extra", [{"key": "id"}, {"window": {"kind": "session", "gap": 5.0}}])
def test_ordered_subscriptions_are_refused_more_than_one_worker(extra: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="one worker"):
        SubscriptionSpec(name="s", topic="t/#", handler="h", workers=2, **extra)
    assert SubscriptionSpec(name="s", topic="t/#", handler="h", **extra).workers == 1


async def test_a_window_split_across_two_parts_reads_as_the_unsplit_window(
    store: Store, api: httpx.AsyncClient
) -> None:
    events, parts = split(random.Random(17), 3000)
    whole = {(w.group, w.window_start): w for w in windows(events, 0)}
    stored = store_results(store, windows(parts[0], 0) + windows(parts[1], 1))
    assert len(stored) == 2 * len(whole), "each part is a row of its own"
    assert store_results(store, windows(parts[0], 0) + windows(parts[1], 1)) == stored, "stored once per part id"

    rows = (await api.get("/v1/aggregates", params={"device": "dev1", "limit": 100})).json()
    assert sorted((r["group"], r["window_start"]) for r in rows) == sorted(whole), "one row per window"
    for row in rows:
        unsplit = whole[(row["group"], row["window_start"])]
        assert (row["events"], row["parts"], row["part"]) == (unsplit.events, 2, 0)
        assert row["window_id"] == unsplit.id[: -len("/0")] + "/0+1"
        got, want = row["fields"]["v"]["stats"], unsplit.fields["v"]
        for name in ("count", "min", "max", "first", "last"):
            assert got[name] == want.statistic(name), name
        for name in ("sum", "mean", "stddev"):
            assert got[name] == pytest.approx(want.statistic(name), rel=1e-9), name
        # Merged sketches hold exactly the unsplit window's bins: the same quantiles, not an average of parts'.
        for name in ("p50", "p99"):
            assert got[name] == want.statistic(name), name


async def test_a_limit_never_cuts_a_window_between_its_parts(store: Store) -> None:
    events, parts = split(random.Random(3), 400)
    store_results(store, windows(parts[0], 0) + windows(parts[1], 1))
    whole = windows(events, 0)
    aggregates = Aggregates(store)
    for limit in (1, 2, 3):
        rows = aggregates.query(device="dev1", limit=limit)
        assert len(rows) == limit
        for row in rows:
            (same,) = [w for w in whole if (w.group, w.window_start) == (row.group, row.window_start)]
            assert (row.events, row.parts) == (same.events, 2), limit
    assert sum(r.events for r in aggregates.query(device="dev1", limit=None)) == len(events)


async def test_rollups_merge_the_parts_once(store: Store, api: httpx.AsyncClient) -> None:
    events, parts = split(random.Random(5), 600)
    store_results(store, windows(parts[0], 0) + windows(parts[1], 1))
    (row,) = (await api.get("/v1/aggregates", params={"device": "dev1", "every": "1m", "group": "g0"})).json()
    assert row["events"] == sum(1 for g, _, _ in events if g == "g0")
