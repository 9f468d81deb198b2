"""An agent that dies without a goodbye is marked offline at the hub by its MQTT will, within 1.5 x keepalive.

The real ``edge-agent`` process (its cloud link's keepalive set to ``KEEPALIVE``, the least the config allows)
and a hub in-process, each on a broker of this test alone. The agent's cloud session carries a retained offline
``Status`` as its will; the hub applies it like any status, and its API shows the device offline.

Two deaths:

- ``sigkill``: the process is killed; the kernel closes its socket, so the broker sees the connection end and
  publishes the will at once.
- ``sigstop``: the process is frozen with its socket open (a hung device, or a link that silently went away);
  the broker publishes the will after 1.5 x keepalive without a packet from it.

The hub must show a killed agent offline within 1.5 x keepalive plus ``INGEST_MARGIN`` (the hub's ingest and
commit, this test's polling); it takes a fraction of a second. A frozen one's will is the broker's keepalive
check: MQTT says 1.5 x keepalive of silence, and mosquitto 2.0.11 takes up to ``BROKER_SWEEP`` longer (a bare
paho client frozen 2.3 s after its CONNECT, nothing sent since: keepalive 5 s, will 11.0-11.8 s after the
CONNECT; 6 s: 10.9 s; 10 s: 16.9-17.6 s), so its bound is 1.5 x keepalive + ``BROKER_SWEEP`` +
``INGEST_MARGIN``, and at least half a keepalive must pass (the agent's last packet is at most one keepalive
before the freeze). The measured delays are printed (``-s``) for docs/performance.md.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.mosquitto import Mosquitto
from tests.support.daemons import agent_process
from tests.support.readers import hub_device
from tests.support.rig import Rig
from tests.support.running import running_hub, wait_for

pytestmark = pytest.mark.integration

KEEPALIVE = 5
"""The agent's cloud keepalive in seconds (the config's least)."""
INGEST_MARGIN = 1.0
"""Seconds for the hub to commit the will's status and for this test to see it (its API polled every 50 ms)."""
BROKER_SWEEP = 4.5
"""Seconds mosquitto 2.0.11 may publish a silent client's will after 1.5 x keepalive (measured up to 4.3 s)."""


@pytest.mark.parametrize("death", ["sigkill", "sigstop"])
async def test_a_dead_agent_is_marked_offline_by_its_will(
    fresh_broker: Callable[..., Mosquitto], docker_client: Any, rig: Rig, tmp_path: Path, death: str
) -> None:
    cloud = fresh_broker()
    config = rig.agent_document(
        data_dir=tmp_path / "agent-data", cloud_port=cloud.port, cloud_extra={"keepalive": KEEPALIVE}
    )
    async with running_hub(cloud, rig.prefix, tmp_path / "hub.db") as (api, _hub):
        with agent_process(config, tmp_path / "agent") as agent:
            await agent.start()
            await wait_for(lambda: _online(api, rig.device_id, True), timeout=30, what="the agent online at the hub",
                           detail=agent.tail)  # fmt: skip
            died = time.monotonic()
            if death == "sigkill":
                agent.kill()
            else:
                os.kill(agent.pid, signal.SIGSTOP)
            try:
                bound = 1.5 * KEEPALIVE + INGEST_MARGIN + (BROKER_SWEEP if death == "sigstop" else 0.0)
                await wait_for(
                    lambda: _online(api, rig.device_id, False),
                    timeout=bound + 10,  # fail with the measured delay below rather than a timeout
                    what="the agent offline at the hub",
                    detail=cloud.log_text,
                )
                delay = time.monotonic() - died
            finally:
                agent.kill()  # a stopped process takes SIGKILL too
    print(f"\n{death}: offline at the hub {delay:.2f}s after the death (keepalive {KEEPALIVE}s, bound {bound:g}s)")
    assert delay <= bound, f"{death}: offline after {delay:.2f}s, more than {bound:g}s (keepalive {KEEPALIVE}s)"
    if death == "sigstop":
        # The will came from the keepalive running out, not from a closed socket: silence of 1.5 x keepalive,
        # counted from the agent's last packet, which is at most one keepalive before the freeze.
        assert delay >= 0.5 * KEEPALIVE, f"offline after only {delay:.2f}s: not the keepalive's doing"


async def _online(api: httpx.AsyncClient, device: str, online: bool) -> bool:
    shown = await hub_device(api, device)
    return bool(shown) and shown["online"] is online
