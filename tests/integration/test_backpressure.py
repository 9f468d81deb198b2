"""Issue 5's backpressure: a handler fed ten times faster than it can go, for a bounded time.

With ``overflow = "drop-oldest"`` the hot subscription loses events (counted) and the calm one nothing; with
``"block"`` nothing is lost. The harness (the agent as a process, paced load, reported state, memory) is in
tests/support/overload.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import docker
import pytest

from scripts.mosquitto import Mosquitto
from tests.support.engine import ensure_handler_images
from tests.support.overload import Overload, check_overload_and_memory, run_overload

pytestmark = pytest.mark.integration

IMAGES = ("edgefleet/slow:dev", "edgefleet/passthrough:dev")


@pytest.fixture(scope="module")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    return ensure_handler_images(docker_client, IMAGES)



DROP = Overload("drop-oldest", delay_ms=5, seconds=20, invalid_every=50)
BLOCK = Overload("block", delay_ms=2, seconds=2)
# A backlog beyond the intake's hand-off buffer, with dead letters (QoS 1 publications) in it: they must
# keep flowing while intake is held (they go over their own connection).
BLOCK_DEAD_LETTERS = Overload("block", delay_ms=2, seconds=20, invalid_every=50)

@pytest.mark.parametrize("load", [
    pytest.param(DROP, id="drop-oldest-20s"),
    pytest.param(replace(DROP, seconds=60), id="drop-oldest-60s", marks=pytest.mark.slow),
])
def test_drop_oldest_under_10x_overload(load: Overload, device_broker: Mosquitto, cloud_broker: Mosquitto,
                                        images: dict[str, str], docker_client: docker.DockerClient,
                                        device_id: str, topic_prefix: str, tmp_path: Path) -> None:
    figures = run_overload(load, device=device_broker, cloud=cloud_broker, device_id=device_id,
                           prefix=topic_prefix, tmp_path=tmp_path, drain_timeout=60)
    check_overload_and_memory(figures, load)
    hot, calm = figures.hot, figures.calm
    # Every published event is accounted for: processed, dropped (counted) or dead-lettered (the invalid ones
    # that were not dropped first).
    assert hot.received == figures.published["hot"]
    assert hot.processed + hot.dropped_overflow + sum(hot.dead_lettered.values()) == figures.published["hot"]
    assert set(hot.dead_lettered) <= {"invalid-json"}
    assert 0 < hot.dead_lettered.get("invalid-json", 0) <= figures.invalid
    assert hot.dropped_overflow >= 0.5 * figures.published["hot"], figures
    # Drops are the hot subscription's alone: the calm one on the same agent lost nothing.
    assert calm.dropped_overflow == 0
    assert calm.processed == calm.received == figures.published["calm"]
    assert calm.dead_lettered == {}


@pytest.mark.parametrize("load", [
    pytest.param(BLOCK, id="block-2s"),
    # 10x of a 200/s handler: 120,000 events, about ten minutes to drain.
    pytest.param(replace(BLOCK, delay_ms=5, seconds=60), id="block-60s",
                 marks=[pytest.mark.slow, pytest.mark.timeout(1800)]),
])
def test_block_under_10x_overload_loses_nothing(load: Overload, device_broker: Mosquitto, cloud_broker: Mosquitto,
                                                images: dict[str, str], docker_client: docker.DockerClient,
                                                device_id: str, topic_prefix: str, tmp_path: Path) -> None:
    # Everything waits: draining takes about factor x seconds at the handler's capacity.
    drain = load.seconds * load.factor * 1.5 + 60
    figures = run_overload(load, device=device_broker, cloud=cloud_broker, device_id=device_id,
                           prefix=topic_prefix, tmp_path=tmp_path, drain_timeout=drain)
    check_overload_and_memory(figures, load)
    for name, sub in (("hot", figures.hot), ("calm", figures.calm)):
        assert sub.dropped_overflow == 0, figures
        assert sub.received == figures.published[name], figures
        # Held back by the intake, events are not late: windows close behind the oldest event not yet queued.
        assert sub.dead_lettered == {}, figures
        assert sub.processed == figures.published[name], figures


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_block_backlog_with_dead_letters_keeps_flowing(device_broker: Mosquitto, cloud_broker: Mosquitto,
                                                       images: dict[str, str], docker_client: docker.DockerClient,
                                                       device_id: str, topic_prefix: str, tmp_path: Path) -> None:
    load = BLOCK_DEAD_LETTERS
    figures = run_overload(load, device=device_broker, cloud=cloud_broker, device_id=device_id,
                           prefix=topic_prefix, tmp_path=tmp_path, drain_timeout=load.seconds * load.factor * 1.5 + 60)
    assert figures.hot.dead_lettered.get("invalid-json") == figures.invalid
    assert figures.hot.processed + figures.invalid == figures.published["hot"]
