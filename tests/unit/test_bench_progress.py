"""The benchmark's progress count: closed windows plus the open windows of every checkpoint of a subscription."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.agentproc import AgentProcess
from edge_agent.aggregation.windows import WindowSet
from edge_agent.outbox import Outbox
from edge_protocol.specs import SubscriptionSpec


def windows(name: str, events: list[float]) -> WindowSet:
    spec = SubscriptionSpec(name=name, topic="bench/#", handler="pt", window={"size": "1s"})
    ws = WindowSet(spec, "dev")
    for ts in events:
        assert ws.add("", {"v": 1.0}, ts)
    return ws


async def test_open_windows_count_under_revision_and_part_keys(tmp_path: Path) -> None:
    q0 = windows("q0", [10.1, 10.2, 11.5])  # [10, 11) closes below, [11, 12) stays open
    closed = q0.close_due(11.2)
    w0, w1 = windows("w", [10.1] * 4), windows("w", [10.2] * 5)  # an intake worker's two parts
    other = windows("q0x", [10.1] * 7)  # a name that begins like q0's: not q0's events
    checkpoints: dict[str, dict[str, Any] | None] = {
        "q0@1": q0.snapshot(), "w@3#p0": w0.snapshot(), "w@3#p1": w1.snapshot(), "q0x@1": other.snapshot(),
    }  # fmt: skip
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        await outbox.commit(closed, checkpoints)
    agent = AgentProcess({"device_id": "dev", "data_dir": str(tmp_path)}, docker_client=None)  # type: ignore[arg-type]
    assert [agent.processed(name) for name in ("q0", "w", "q0x", "lat")] == [3, 9, 7, 0]
