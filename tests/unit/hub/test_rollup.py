"""Roll-ups through the API: merged states equal one pass over the pooled values; overlaps and misfits refused."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.api.app import create_app
from hub.db.store import Store
from hub.ingest.aggregates import Aggregates
from hub.ingest.rollup import HOPPING_REASON, RollupError, check_not_hopping, rollup
from tests.unit.hub.factories import record

T0 = 1_200.0  # a multiple of 60, so six 10 s windows from T0 fill one 1 min bucket
STATS = ("count", "sum", "min", "max", "mean", "stddev", "p50", "p99")


def values(rng: random.Random, n: int) -> tuple[float, ...]:
    return tuple(rng.uniform(-50.0, 150.0) for _ in range(n))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as opened:
        yield opened


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, clock=lambda: T0 + 3600)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield client


async def get(api: httpx.AsyncClient, status: int = 200, **params: Any) -> Any:
    response = await api.get("/v1/aggregates", params=params)
    assert response.status_code == status, response.text
    return response.json()


def assert_pooled(field: dict[str, Any], pooled: list[float]) -> None:
    """Exact count/sum/min/max, mean and population stddev to 1e-9, quantiles within 1% of the lower rank."""
    stats = field["stats"]
    n = len(pooled)
    mean = math.fsum(pooled) / n
    stddev = math.sqrt(math.fsum((v - mean) ** 2 for v in pooled) / n)
    assert stats["count"] == n
    assert stats["sum"] == pytest.approx(math.fsum(pooled), rel=1e-12)
    assert (stats["min"], stats["max"]) == (min(pooled), max(pooled))
    assert stats["mean"] == pytest.approx(mean, rel=1e-9)
    assert stats["stddev"] == pytest.approx(stddev, rel=1e-9)
    ordered = sorted(pooled)
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        exact = ordered[math.floor(q * (n - 1))]  # numpy's method="lower"
        assert stats[name] == pytest.approx(exact, rel=0.01), name


async def test_rollup_across_devices_equals_one_pass_over_all_values(store: Store, api: httpx.AsyncClient) -> None:
    rng = random.Random(6)
    pooled: list[float] = []
    for i, device in enumerate(("dev-a", "dev-b", "dev-c")):
        vals = values(rng, 200 + 50 * i)
        pooled += vals
        Aggregates(store).store_batch(device, [record(1, device=device, start=T0, values=vals, sketch=True)])
    (row,) = await get(api, rollup="devices", stats=",".join(STATS))
    assert (row["devices"], row["device"], row["events"]) == (3, "*", len(pooled))
    assert (row["window_start"], row["window_end"]) == (T0, T0 + 10)
    assert row["stats"] == list(STATS)
    assert_pooled(row["fields"]["temp"], pooled)
    assert row["fields"]["temp"]["count"] == len(pooled)  # the usual figures are merged too


async def test_six_10s_windows_make_one_1m_row(store: Store, api: httpx.AsyncClient) -> None:
    rng = random.Random(60)
    pooled: list[float] = []
    records = []
    for i in range(6):
        vals = values(rng, 100 + i)
        pooled += vals
        records.append(record(i + 1, start=T0 + 10 * i, values=vals, sketch=True))
    Aggregates(store).store_batch("dev-a", records)
    (row,) = await get(api, every="1m", stats=",".join(STATS))
    assert (row["window_start"], row["window_end"], row["devices"], row["device"]) == (T0, T0 + 60, 1, "dev-a")
    assert_pooled(row["fields"]["temp"], pooled)


async def test_devices_and_buckets_combine(store: Store, api: httpx.AsyncClient) -> None:
    rng = random.Random(7)
    pooled: list[float] = []
    for device in ("dev-a", "dev-b"):
        recs = []
        for i in range(12):  # two minutes of 10 s windows
            vals = values(rng, 20)
            if i < 6:
                pooled += vals
            recs.append(record(i + 1, device=device, start=T0 + 10 * i, values=vals, sketch=True))
        Aggregates(store).store_batch(device, recs)
    rows = await get(api, rollup="devices", every="1m", stats=",".join(STATS))
    assert [(r["window_start"], r["devices"], r["events"]) for r in rows] == [(T0 + 60, 2, 240), (T0, 2, 240)]
    assert_pooled(rows[1]["fields"]["temp"], pooled)


async def test_a_window_without_a_sketch_leaves_quantiles_empty(store: Store, api: httpx.AsyncClient) -> None:
    Aggregates(store).store_batch("dev-a", [record(1, start=T0, sketch=True)])
    Aggregates(store).store_batch("dev-b", [record(1, device="dev-b", start=T0, sketch=False)])
    (row,) = await get(api, rollup="devices", stats="count,p99")
    assert row["fields"]["temp"]["stats"] == {"count": 6.0, "p99": None}


async def test_default_stats_are_the_subscriptions(store: Store, api: httpx.AsyncClient) -> None:
    Aggregates(store).store_batch("dev-a", [record(1, start=T0, stats=("count", "max"))])
    (row,) = await get(api)
    assert (row["stats"], row["fields"]["temp"]["stats"], row["devices"]) == (
        ["count", "max"],
        {"count": 3.0, "max": 3.0},
        1,
    )


async def test_hopping_windows_are_refused(store: Store, api: httpx.AsyncClient) -> None:
    # size 10 s, hop 5 s: [T0, T0+10) and [T0+5, T0+15) overlap.
    Aggregates(store).store_batch("dev-a", [record(1, start=T0), record(2, start=T0 + 5)])
    for params in ({"rollup": "devices"}, {"every": "1m"}):
        body = await get(api, 422, **params)
        assert body["detail"] == HOPPING_REASON
    assert len(await get(api)) == 2  # plain queries still work


async def test_every_must_be_a_multiple_of_the_window_size(store: Store, api: httpx.AsyncClient) -> None:
    Aggregates(store).store_batch("dev-a", [record(1, start=T0, size=10.0)])
    body = await get(api, 422, every="15s")
    assert "not a multiple of the windows' size (10s)" in body["detail"]
    assert (await get(api, 422, every="soon"))["detail"].startswith("every: not a duration")
    assert (await get(api, 422, every="0s"))["detail"] == "every: must be longer than zero"


@pytest.mark.parametrize(
    ("params", "detail"),
    [({"rollup": "hosts"}, None), ({"stats": "count,median"}, "stats: unknown statistic 'median'")],
)
async def test_bad_rollup_options_are_422(
    store: Store, api: httpx.AsyncClient, params: dict[str, str], detail: str | None
) -> None:
    body = await get(api, 422, **params)
    if detail is not None:
        assert detail in body["detail"]


async def test_rollup_limit_applies_to_the_rolled_rows(store: Store, api: httpx.AsyncClient) -> None:
    for device in ("dev-a", "dev-b"):
        Aggregates(store).store_batch(device, [record(i + 1, device=device, start=T0 + 10 * i) for i in range(5)])
    rows = await get(api, rollup="devices", limit=2)
    assert [(r["window_start"], r["devices"]) for r in rows] == [(T0 + 40, 2), (T0 + 30, 2)]


def test_rollup_without_options_passes_rows_through(store: Store) -> None:
    Aggregates(store).store_batch("dev-a", [record(1, start=T0), record(2, start=T0 + 5)])  # even hopping ones
    rows = Aggregates(store).query()
    assert [r.aggregate for r in rollup(rows, across_devices=False, every=None)] == rows


def test_windows_of_different_sizes_under_one_start_are_refused(store: Store) -> None:
    Aggregates(store).store_batch("dev-a", [record(1, start=T0, size=10.0)])
    Aggregates(store).store_batch("dev-b", [record(1, device="dev-b", start=T0, size=60.0)])
    rows = Aggregates(store).query()
    with pytest.raises(RollupError, match="different sizes"):
        rollup(rows, across_devices=True, every=None)
    # Both fit one 1 min bucket, as multiples of their own sizes.
    (merged,) = rollup(rows, across_devices=True, every=60.0)
    assert (merged.devices, merged.aggregate.events) == (2, 6)


def test_adjacent_windows_of_separate_series_are_not_hopping(store: Store) -> None:
    Aggregates(store).store_batch("dev-a", [record(i + 1, start=T0 + 10 * i) for i in range(3)])
    Aggregates(store).store_batch("dev-b", [record(1, device="dev-b", start=T0 + 5)])  # another device: not an overlap
    check_not_hopping(Aggregates(store).query())
