"""Handlers killed for memory, as the hub counts them from reported states and shows them (issue 14)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from rich.console import Console

from edge_protocol.messages import HandlerReport, Reported
from edge_protocol.topics import Topics
from hub.api.schemas.fleet import DeviceOut
from hub.cli.render.fleet import device_detail
from hub.db.store import Store
from hub.ingest.consumer import Ingest
from hub.metrics import HandlerFailureCounts
from hub.mqtt.broker import Inbound
from hub.mqtt.fake import FakeBus

TOPICS = Topics("unit")


def ooms() -> float:
    return REGISTRY.get_sample_value("edgefleet_hub_handler_failures_total", {"reason": "oom"}) or 0.0


def reported(device: str, ts: float, **oom_kills: int) -> Reported:
    handlers = [HandlerReport(name=name, image="i", healthy=True, oom_kills=n) for name, n in oom_kills.items()]
    return Reported(device=device, agent_version="0.2.0", handlers=handlers, ts=ts)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as opened:
        yield opened


async def test_ingest_counts_the_oom_kills_devices_report(store: Store) -> None:
    ingest = Ingest(store, FakeBus(), TOPICS, clock=lambda: 5000.0)

    async def deliver(state: Reported, *, retain: bool = False) -> None:
        await ingest.handle(Inbound(TOPICS.reported(state.device), state.model_dump_json().encode(), retain))

    before = ooms()
    await deliver(reported("oom-a", 10.0, hog=2, other=0))
    assert ooms() - before == 2
    await deliver(reported("oom-a", 20.0, hog=3, other=1))
    assert ooms() - before == 4


def test_counts_are_deltas_of_newer_states_and_a_retained_first_state_is_a_baseline() -> None:
    counts = HandlerFailureCounts()
    before = ooms()
    counts.observe(reported("oom-b", 10.0, hog=5), retained=True)  # heard live by whoever counted it
    assert ooms() - before == 0
    counts.observe(reported("oom-b", 20.0, hog=6), retained=False)
    assert ooms() - before == 1
    counts.observe(reported("oom-b", 20.0, hog=6), retained=False)  # the same state again
    counts.observe(reported("oom-b", 15.0, hog=9), retained=True)  # an older one
    assert ooms() - before == 1
    counts.observe(reported("oom-b", 30.0, hog=2), retained=False)  # the agent restarted: its count too
    assert ooms() - before == 3
    counts.observe(reported("oom-c", 30.0, hog=1), retained=False)  # a device first heard live
    assert ooms() - before == 4


def test_device_show_has_each_handlers_oom_kills() -> None:
    dev = DeviceOut(
        id="dev-a",
        first_seen=1.0,
        last_seen=2.0,
        online=True,
        agent_version="0.2.0",
        handlers=[HandlerReport(name="hog", image="i", healthy=True, restarts=3, oom_kills=2)],
    )
    out = io.StringIO()
    Console(file=out, width=250).print(device_detail(dev))
    header, row = (
        line.split() for line in out.getvalue().splitlines() if line.lstrip().startswith(("handler ", "hog "))
    )
    assert header[header.index("restarts") + 1 : header.index("restarts") + 3] == ["oom", "kills"]
    assert row[4:6] == ["3", "2"]  # restarts, oom kills


def test_a_report_leaves_oom_kills_out_while_zero_so_an_older_hub_still_reads_it() -> None:
    state = reported("oom-d", 1.0, calm=0, hog=2)
    handlers = json.loads(state.wire())["handlers"]
    assert [("oom_kills" in h, h.get("oom_kills")) for h in handlers] == [(False, None), (True, 2)]
    assert Reported.model_validate_json(state.wire()) == state
