"""Local reads of the agent's state leave the lag the next report carries alone (issue 14).

The rollout gate reads each report's ``lag_ms``: the worst arrival-to-outcome time since the last report. A
local read between two reports -- ``/status`` (what ``edge-agent status`` shows) or a scrape of ``/metrics``
-- used to take that figure, so the next report came without it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from edge_agent.runtime.base import FunctionRuntime
from edge_agent.state import AgentState
from edge_agent.status import StatusServer

DEVICE = "dev-lag"


@pytest.fixture
async def agent() -> AsyncIterator[tuple[AgentState, FunctionRuntime, str]]:
    runtime = FunctionRuntime("h", lambda _t, p, _ts: {"v": p})
    await runtime.start()
    pipeline: Any = SimpleNamespace(runtimes={"h": runtime}, dispatchers={}, groups={}, update_errors={})
    state = AgentState(pipeline=pipeline)
    server = StatusServer(state, DEVICE, "127.0.0.1:0", asyncio.get_running_loop())
    try:
        yield state, runtime, server.address
    finally:
        await asyncio.to_thread(server.shutdown)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def lag_of_report(state: AgentState) -> float | None:
    """The lag the next published report carries (ending the interval, as the agent's reporter does)."""
    [handler] = (await state.reported(DEVICE)).handlers
    return handler.lag_ms


async def test_a_local_read_between_two_reports_does_not_change_what_the_next_report_carries(
    agent: tuple[AgentState, FunctionRuntime, str],
) -> None:
    state, runtime, address = agent
    await runtime.process([("t", 1, 0.0)], queued=[0.25])
    assert await lag_of_report(state) == pytest.approx(250, abs=50)

    await runtime.process([("t", 2, 0.0)], queued=[0.5])
    for _ in range(2):  # edge-agent status twice, a Prometheus scrape
        status = json.loads(await asyncio.to_thread(get, f"{address}/status"))
        assert status["handlers"][0]["lag_ms"] == pytest.approx(500, abs=50)
    scraped = await asyncio.to_thread(get, f"{address}/metrics")
    assert 'edgefleet_agent_handler_lag_seconds{handler="h"} 0.5' in scraped

    assert await lag_of_report(state) == pytest.approx(500, abs=50), "the local reads took the report's lag"


async def test_reports_end_intervals_and_reads_see_the_last_one_until_the_next(
    agent: tuple[AgentState, FunctionRuntime, str],
) -> None:
    state, runtime, address = agent
    await runtime.process([("t", 1, 0.0)], queued=[0.5])
    assert await lag_of_report(state) == pytest.approx(500, abs=50)
    # Nothing processed since: a read still shows the interval the report ended, the next report nothing.
    status = json.loads(await asyncio.to_thread(get, f"{address}/status"))
    assert status["handlers"][0]["lag_ms"] == pytest.approx(500, abs=50)
    assert await lag_of_report(state) is None
    status = json.loads(await asyncio.to_thread(get, f"{address}/status"))
    assert status["handlers"][0]["lag_ms"] is None
