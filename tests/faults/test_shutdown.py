"""A clean stop (SIGTERM) of an idle agent with a live cloud link finishes within its grace period."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_config import QUICK_CLOUD
from tests.support.daemons import agent_process, hub_process
from tests.support.rig import Rig
from tests.support.running import wait_for
from tests.support.workloads import TEMP_C, temps_subscription

pytestmark = pytest.mark.integration

GRACE = 5.0


async def test_sigterm_stops_an_idle_agent_within_its_grace_period(
    fresh_broker: Any,
    handler_images: dict[str, str],
    docker_client: Any,
    tmp_path: Path,
    rig: Rig,
) -> None:
    device, cloud = fresh_broker(), fresh_broker()
    config = rig.with_broker(device).agent_document(
        data_dir=tmp_path / "agent-data",
        cloud_port=cloud.port,
        cloud_extra=QUICK_CLOUD,
        handlers=[TEMP_C],
        subscriptions=[temps_subscription(rig.prefix)],
        grace_period=f"{GRACE:g}s",
    )
    with (
        hub_process(cloud, rig.prefix, tmp_path / "hub") as (hub, db, _url),
        agent_process(config, tmp_path / "agent") as agent,
    ):
        await hub.start()
        await agent.start()
        # The hub saw the agent's retained online status: the cloud link is up.
        await wait_for(lambda: _online(db, rig.device_id), timeout=30, what="the agent online at the hub",
                       detail=agent.tail)
        started = time.monotonic()
        returncode = await asyncio.to_thread(agent.stop, 60.0)
        elapsed = time.monotonic() - started
        print(f"\nSIGTERM to exit: {elapsed:.1f}s (grace period {GRACE:g}s), exit status {returncode}")
        assert returncode == 0, agent.tail()
        assert elapsed < GRACE, f"a clean stop of an idle agent took {elapsed:.1f}s"


def _online(db: Path, device_id: str) -> bool:
    if not db.exists():
        return False
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        try:
            row = conn.execute("SELECT online FROM devices WHERE id = ?", (device_id,)).fetchone()
        except sqlite3.OperationalError:
            return False
    return bool(row and row[0])
