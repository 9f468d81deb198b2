"""Where a handler speaks the protocol: the agent's unix socket or stdin/stdout, on the real engine.

The socket lives in a directory the agent makes for each container and bind-mounts read-only. Under ``auto``
(the default) the SDK's handlers end up on the socket and a handler that reads stdin on stdio; one that does
neither is refused at start, and nothing of it is left behind: no container, no directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import docker
import pytest

from edge_agent.errors import HandlerStartError
from edge_agent.runtime.base import Failure
from edge_agent.runtime.containers import LABEL_DEVICE
from edge_agent.runtime.docker import DockerHandler
from edge_agent.runtime.socket_dir import default_socket_root
from edge_protocol.specs import HandlerSpec

pytestmark = pytest.mark.integration

PASSTHROUGH = "edgefleet/passthrough:dev"
BASE = "edgefleet/base:bookworm"  # no entrypoint: ``command`` is the whole process
# A handler without the SDK that reads stdin and answers on stdout, as the protocol allows.
STDIO_HANDLER = """
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    reply = {"kind": "pong", "id": msg["id"]} if msg["kind"] == "ping" else {
        "kind": "result", "id": msg["id"], "values": {"n": len(json.dumps(msg["payload"]))}}
    sys.stdout.write(json.dumps(reply) + "\\n")
    sys.stdout.flush()
"""
EVENTS: list[tuple[str, Any, float]] = [
    ("sensors/a/t", {"v": 1.5, "s": "x"}, 10.0),
    ("sensors/b/t", {"v": -2, "ok": True}, 11.0),
    ("sensors/c/t", [1, 2], 12.0),
]


def _leftovers(client: docker.DockerClient, device_id: str) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"label": f"{LABEL_DEVICE}={device_id}"})]


def _io_dirs() -> set[Path]:
    return set(default_socket_root().glob("edgefleet-io-*"))


@pytest.mark.parametrize(("io", "channel"), [("auto", "socket"), ("socket", "socket"), ("stdio", "stdio")])
async def test_the_sdk_answers_on_either_channel_alike(
    docker_client: docker.DockerClient, handler_images: dict[str, str], device_id: str, io: str, channel: str
) -> None:
    before = _io_dirs()
    spec = HandlerSpec(name="pt", image=PASSTHROUGH, io=io)
    runtime = DockerHandler(spec, client=docker_client, device_id=device_id)
    await runtime.start()
    try:
        assert runtime.io == channel
        assert await runtime.ping()
        outcomes = await runtime.process(EVENTS)
        made = _io_dirs() - before
        assert len(made) == (0 if io == "stdio" else 1)
        (root,) = {d.parent for d in made} or {default_socket_root()}
        assert root.stat().st_mode & 0o777 == 0o700  # nobody but the agent reaches the sockets from the host
    finally:
        await runtime.aclose()
    assert not any(isinstance(o, Failure) for o in outcomes), outcomes
    assert [o.values for o in outcomes] == [{"v": 1.5}, {"v": -2}, {}]  # type: ignore[union-attr]
    assert _leftovers(docker_client, device_id) == []
    assert _io_dirs() - before == set()


async def test_auto_finds_a_handler_that_speaks_on_stdin_and_stdout(
    docker_client: docker.DockerClient, handler_images: dict[str, str], device_id: str
) -> None:
    spec = HandlerSpec(name="plain", image=BASE, command=["python3", "-c", STDIO_HANDLER])
    runtime = DockerHandler(spec, client=docker_client, device_id=device_id)
    await runtime.start()
    try:
        assert runtime.io == "stdio"
        assert await runtime.ping()
        outcomes = await runtime.process(EVENTS)
    finally:
        await runtime.aclose()
    assert [o.values for o in outcomes] == [{"n": 20}, {"n": 21}, {"n": 6}]  # type: ignore[union-attr]
    assert _leftovers(docker_client, device_id) == []


async def test_a_handler_that_never_connects_is_refused_and_leaves_nothing(
    docker_client: docker.DockerClient, handler_images: dict[str, str], device_id: str
) -> None:
    before = _io_dirs()
    spec = HandlerSpec(name="mute", image=BASE, command=["python3", "-c", "import time; time.sleep(120)"])
    runtime = DockerHandler(spec, client=docker_client, device_id=device_id, connect_timeout=2.0)
    with pytest.raises(HandlerStartError) as refused:
        await runtime.start()
    assert "has not connected to $EDGEFLEET_HANDLER_SOCKET or answered a ping on stdout within 2s" in str(
        refused.value
    )
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
    assert "exited before it connected to $EDGEFLEET_HANDLER_SOCKET or answered" in str(refused.value)
    assert time.monotonic() - started < 30  # seen when its attach stream ends, not after the 60 s
    assert _leftovers(docker_client, device_id) == []
