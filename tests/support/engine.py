"""The real Docker engine for tests: client, handler images, cleanup by label, attach-stream framing."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from edge_agent.runtime.containers import LABEL_DEVICE, LABEL_HANDLER

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "containers" / "build.sh"
PRIVATE_SOCKET = "/run/edgefleet/docker.sock"  # where scripts/engine.sh starts its own dockerd
HANDLER_IMAGES = ("edgefleet/temp-c:dev", "edgefleet/passthrough:dev")
# Releases of temp-c for rollout tests (scripts/registry.py pushes them as temp-c 1.1, 1.2-exit, 1.2-errors);
# pass HANDLER_IMAGES + RELEASE_IMAGES to ensure_handler_images (build.sh builds every handler folder anyway).
RELEASE_IMAGES = ("edgefleet/temp-c-v2:dev", "edgefleet/broken-exit:dev", "edgefleet/broken-errors:dev")
DEVICE_LABEL = "edgefleet.device"
# ./dev exports this after running containers/build.sh, so a test session need not build again.
IMAGES_BUILT_ENV = "EDGEFLEET_IMAGES_BUILT"

STDOUT, STDERR = 1, 2
_HEADER = struct.Struct(">BxxxI")  # stream id, 3 zero bytes, big-endian payload length


class EngineUnavailableError(RuntimeError):
    """No Docker engine answers; the message says how to start one."""


def connect_engine() -> docker.DockerClient:
    """A client for DOCKER_HOST, else for scripts/engine.sh's private socket (then exported to the tests)."""
    if not os.environ.get("DOCKER_HOST") and Path(PRIVATE_SOCKET).is_socket():
        os.environ["DOCKER_HOST"] = f"unix://{PRIVATE_SOCKET}"
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineUnavailableError(
            f"no Docker engine answers at {where} ({exc}); start one with "
            '`eval "$(scripts/engine.sh start)"` (root) or run the tests through ./dev test'
        ) from exc
    return client


def ensure_handler_images(
    client: docker.DockerClient, images: Sequence[str] = HANDLER_IMAGES
) -> dict[str, str]:
    """Image name -> id for the example handlers, building them (and the base) once when needed.

    Without ./dev's marker the build always runs: it is layer-cached (about a second) and an image left
    over from older handler or SDK sources would otherwise be tested silently.
    """
    if os.environ.get(IMAGES_BUILT_ENV) != "1" or not all(_has_image(client, name) for name in images):
        subprocess.run([str(BUILD_SCRIPT)], check=True, stdout=subprocess.DEVNULL, timeout=600)
        os.environ[IMAGES_BUILT_ENV] = "1"
    return {name: str(client.images.get(name).id) for name in images}


def _has_image(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def remove_labelled(client: docker.DockerClient, device_id: str) -> int:
    """Force-remove every container labelled edgefleet.device=<device_id>; returns how many."""
    containers = client.containers.list(all=True, filters={"label": f"{DEVICE_LABEL}={device_id}"})
    for container in containers:
        # NotFound: removed concurrently (by the agent under test, or auto-remove).
        with contextlib.suppress(docker.errors.NotFound):
            try:
                container.remove(force=True)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: the agent's own removal is in progress; wait for it below
                    raise
                _wait_removed(container)
    return len(containers)


def _wait_removed(container: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            container.reload()
        except docker.errors.NotFound:
            return
        time.sleep(0.1)
    raise TimeoutError(f"container {container.id[:12]} still there {timeout:g}s after its removal began")


def raw_socket(attached: Any) -> socket.socket:
    """The socket under what `Container.attach_socket()` returns (a SocketIO for unix and tcp engines)."""
    sock = getattr(attached, "_sock", attached)
    if not isinstance(sock, socket.socket):
        raise TypeError(f"unexpected attach socket type {type(attached).__name__}")
    return sock


def demux(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """(stream id, payload) frames from a non-TTY attach stream until EOF; socket timeouts propagate."""
    buf = bytearray()
    while True:
        while len(buf) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(buf)
            if len(buf) < _HEADER.size + size:
                break
            yield stream, bytes(buf[_HEADER.size : _HEADER.size + size])
            del buf[: _HEADER.size + size]
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk


def containers_of(
    client: docker.DockerClient, device: str, handler: str | None = None, *, running: bool = True
) -> list[Container]:
    """The containers an agent labelled with ``device`` (and ``handler``): running ones, or all."""
    labels = [f"{LABEL_DEVICE}={device}"] + ([f"{LABEL_HANDLER}={handler}"] if handler else [])
    return client.containers.list(all=not running, filters={"label": labels})  # type: ignore[no-any-return]


def labelled_containers(client: docker.DockerClient, device_id: str, *, running_only: bool = False) -> list[Any]:
    """Every container of ``device_id``, stopped ones too unless ``running_only``."""
    return containers_of(client, device_id, running=running_only)
