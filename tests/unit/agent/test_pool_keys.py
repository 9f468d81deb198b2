"""ReplicaPool: a key stays on one replica from batch to batch, whatever other keys share its batch (issue 14)."""

from __future__ import annotations

import random
from typing import Any

from edge_agent.runtime.base import FunctionRuntime, HandlerRuntime
from edge_agent.runtime.pool import ReplicaPool, replica_of
from edge_protocol.specs import HandlerSpec

KEYS = [f"sensor-{i}" for i in range(200)]


def _pool(replicas: int) -> ReplicaPool:
    def make(i: int) -> HandlerRuntime:
        return FunctionRuntime(f"r{i}", lambda _t, p, _ts, i=i: {"v": p, "replica": i})

    return ReplicaPool(HandlerSpec(name="h", image="i", replicas=replicas), make)


async def test_a_key_stays_on_one_replica_across_sparse_batches() -> None:
    """Many batches, each with a few keys (most replicas get nothing in most batches): every key is always
    served by the same replica, and each key's events come back in order."""
    pool = _pool(4)
    await pool.start()
    rng = random.Random(14)
    served: dict[str, set[int]] = {}
    try:
        for batch in range(300):
            keys = [rng.choice(KEYS) for _ in range(rng.randint(1, 5))]
            events: list[tuple[str, Any, float]] = [("t", [batch, i], 0.0) for i in range(len(keys))]
            outcomes = await pool.process(events, keys)
            assert [o.values["v"] for o in outcomes] == [[batch, i] for i in range(len(keys))]  # type: ignore[union-attr]
            for key, outcome in zip(keys, outcomes, strict=True):
                served.setdefault(key, set()).add(outcome.values["replica"])  # type: ignore[union-attr]
    finally:
        await pool.aclose()
    moved = {key: replicas for key, replicas in served.items() if len(replicas) > 1}
    assert not moved, f"{len(moved)} keys served by more than one replica, e.g. {next(iter(moved.items()))}"
    assert {r for replicas in served.values() for r in replicas} == {0, 1, 2, 3}, "every replica serves keys"


async def test_the_pool_serves_a_key_on_the_replica_it_hashes_to() -> None:
    pool = _pool(3)
    await pool.start()
    try:
        for key in KEYS[:50]:
            [outcome] = await pool.process([("t", 0, 0.0)], [key])
            assert outcome.values["replica"] == replica_of(key, 3)  # type: ignore[union-attr]
    finally:
        await pool.aclose()


def test_scaling_up_moves_only_the_keys_the_new_replica_wins() -> None:
    keys = [f"k{i}" for i in range(10_000)]
    for n in range(1, 8):
        before = {k: replica_of(k, n) for k in keys}
        after = {k: replica_of(k, n + 1) for k in keys}
        moved = [k for k in keys if before[k] != after[k]]
        assert all(after[k] == n for k in moved), "a key moves only to the new replica"
        # About 1 in n + 1 keys move (10,000 keys: well within 20 % of that share).
        assert abs(len(moved) / len(keys) - 1 / (n + 1)) < 0.2 / (n + 1), (n, len(moved))
        shares = [sum(1 for k in keys if after[k] == r) for r in range(n + 1)]
        assert min(shares) > 0.7 * len(keys) / (n + 1), shares


def test_scaling_down_moves_only_the_keys_of_the_replica_that_goes() -> None:
    keys = [f"k{i}" for i in range(5_000)]
    before = {k: replica_of(k, 5) for k in keys}
    after = {k: replica_of(k, 4) for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != 4)
