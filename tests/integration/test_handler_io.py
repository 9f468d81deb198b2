"""Where a handler speaks the protocol: the agent's unix socket (default) or stdin/stdout, on the real engine.

The socket lives in a directory the agent makes for each container and bind-mounts read-only; a handler that
does not connect is refused at start with a reason that names the way out (``io = "stdio"``), and nothing of
it is left behind: no container, no directory.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from edge_agent.errors import HandlerStartError
from edge_agent.runtime.base import Failure
from edge_agent.runtime.docker import LABEL_DEVICE, DockerHandler
from edge_protocol.specs import HandlerSpec

pytestmark = pytest.mark.integration

PASSTHROUGH = "edgefleet/passthrough:dev"
BASE = "edgefleet/base:bookworm"  # no entrypoint: ``command`` is the whole process
EVENTS: list[tuple[str, Any, float]] = [
    ("sensors/a/t", {"v": 1.5, "s": "x"}, 10.0),
    ("sensors/b/t", {"v": -2, "ok": True}, 11.0),
    ("sensors/c/t", [1, 2], 12.0),
]


def _leftovers(client: docker.DockerClient, device_id: str) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"label": f"{LABEL_DEVICE}={device_id}"})]


def _io_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("edgefleet-io-*"))  # where the agent makes them


@pytest.mark.parametrize("io", ["socket", "stdio"])
async def test_the_sdk_answers_on_either_channel_alike(
    docker_client: docker.DockerClient, handler_images: dict[str, str], device_id: str, io: str
) -> None:
    before = _io_dirs()
    spec = HandlerSpec(name="pt", image=PASSTHROUGH, io=io)
    runtime = DockerHandler(spec, client=docker_client, device_id=device_id)
    await runtime.start()
    try:
        assert await runtime.ping()
        outcomes = await runtime.process(EVENTS)
        made = _io_dirs() - before
        assert len(made) == (1 if io == "socket" else 0)
    finally:
        await runtime.aclose()
    assert not any(isinstance(o, Failure) for o in outcomes), outcomes
    assert [o.values for o in outcomes] == [{"v": 1.5}, {"v": -2}, {}]  # type: ignore[union-attr]
    assert _leftovers(docker_client, device_id) == []
    assert _io_dirs() - before == set()


async def test_a_handler_that_never_connects_is_refused_and_leaves_nothing(
    docker_client: docker.DockerClient, handler_images: dict[str, str], device_id: str
) -> None:
    before = _io_dirs()
    spec = HandlerSpec(name="mute", image=BASE, command=["python3", "-c", "import time; time.sleep(120)"])
    runtime = DockerHandler(spec, client=docker_client, device_id=device_id, connect_timeout=2.0)
    with pytest.raises(HandlerStartError) as refused:
        await runtime.start()
    assert "did not connect to $EDGEFLEET_HANDLER_SOCKET within 2s" in str(refused.value)
    assert 'io = "stdio"' in str(refused.value)
    assert _leftovers(docker_client, device_id) == []
    assert _io_dirs() - before == set()


async def test_a_handler_that_exits_before_connecting_is_refused_at_once(
    docker_client: docker.DockerClient, handler_images: dict[str, str], device_id: str
) -> None:
    spec = HandlerSpec(name="gone", image=BASE, command=["python3", "-c", "raise SystemExit(3)"])
    runtime = DockerHandler(spec, client=docker_client, device_id=device_id, connect_timeout=60.0)
    started = time.monotonic()
    with pytest.raises(HandlerStartError) as refused:
        await runtime.start()
    assert "exited before it connected" in str(refused.value)
    assert time.monotonic() - started < 30  # seen when its attach stream ends, not after the 60 s
    assert _leftovers(docker_client, device_id) == []
