"""The real agent process under a wall clock stepped +1 h and back: a stream of fresh events keeps being
processed into arrival-time windows and none is dead-lettered as late.

The agent's wall clock is stepped through its test hook (``EDGEFLEET_TEST_CLOCK_OFFSET_FILE``, see
edge_protocol/clocks.py): the file holds seconds added to ``time.time()``, re-read whenever it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_protocol.clocks import OFFSET_FILE_ENV
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import agent_document
from tests.support.daemons import agent_process
from tests.support.mqtt_clients import dead_letters, publish_all
from tests.support.readers import outbox_results
from tests.support.running import wait_for

pytestmark = pytest.mark.integration

HOUR = 3600.0
BURST = 40


def set_offset(path: Path, seconds: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{seconds}\n")
    os.replace(tmp, path)  # a new inode: the agent sees the change on its next reading


def events_in(outbox: Path) -> tuple[int, int]:
    """(events in closed windows in the outbox, events in the checkpointed open windows)."""
    if not outbox.exists():
        return 0, 0
    closed = sum(int(r["events"]) for r in outbox_results(outbox))
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=10)) as db:
        try:
            rows = db.execute("SELECT state FROM checkpoints").fetchall()
        except sqlite3.OperationalError:
            rows = []
    open_ = sum(int(w["events"]) for (state,) in rows for w in json.loads(state)["windows"])
    return closed, open_


async def test_a_wall_clock_jump_and_its_correction_cost_no_events(
    device_broker: Mosquitto,
    handler_images: dict[str, str],
    docker_client: Any,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offset = tmp_path / "clock-offset"
    set_offset(offset, 0.0)
    monkeypatch.setenv(OFFSET_FILE_ENV, str(offset))  # the agent process inherits it
    data_dir = tmp_path / "agent-data"
    outbox = data_dir / "outbox.sqlite"
    config = agent_document(
        device_id=device_id,
        data_dir=data_dir,
        device_port=device_broker.port,
        prefix=topic_prefix,
        handlers=[{"name": "pass", "image": "edgefleet/passthrough:dev"}],
        subscriptions=[{
            "name": "meters",
            "topic": f"{topic_prefix}/meters/+",
            "handler": "pass",
            "window": {"size": "1s"},
            "lateness": "0.5s",
            "fields": ["v"],
            "stats": ["count", "sum"],
        }],
    )  # fmt: skip
    sent = 0

    async def burst() -> None:
        nonlocal sent
        messages = [(f"{topic_prefix}/meters/m{i % 3}", orjson.dumps({"v": float(sent + i)})) for i in range(BURST)]
        await asyncio.to_thread(publish_all, device_broker, messages)
        sent += BURST
        await wait_for(lambda: sum(events_in(outbox)) == sent, timeout=30,
                       what=f"{sent} events in windows", detail=agent.tail)  # fmt: skip

    with agent_process(config, tmp_path / "agent") as agent, dead_letters(device_broker, topic_prefix) as letters:
        await agent.start()
        await burst()
        await burst()
        set_offset(offset, HOUR)  # the device's clock steps an hour ahead
        await burst()
        await wait_for(lambda: "the wall clock jumped by +3600" in agent.log_text(), timeout=10,
                       what="the agent to see the jump", detail=agent.tail)  # fmt: skip
        await burst()
        set_offset(offset, 0.0)  # and is set right again
        await burst()
        await wait_for(lambda: "the wall clock jumped by -3600" in agent.log_text(), timeout=10,
                       what="the agent to see the correction", detail=agent.tail)  # fmt: skip
        await burst()
        closed_before, _ = events_in(outbox)
        await burst()
        # Windows go on closing after the jump and its correction: the last bursts' windows close within a few s.
        await wait_for(lambda: events_in(outbox)[0] == sent, timeout=15,
                       what="every window closed", detail=agent.tail)  # fmt: skip
        assert agent.running, agent.tail()
    assert not letters.records, [(d.reason, d.detail) for d in letters.records]
    results = outbox_results(outbox)
    assert closed_before < sent
    assert sum(int(r["events"]) for r in results) == sent
    # No window was stamped an hour ahead (the jump was not followed) or opened twice.
    starts = [float(r["window_start"]) for r in results]
    assert max(starts) - min(starts) < HOUR / 2
    assert len({r["id"] for r in results}) == len(results)
