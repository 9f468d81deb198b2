"""A handler's container as the engine sees it: the hardened create arguments, the image, creation with the
attach stream, and removal (of one container, and of whatever an earlier run of this device's agent left).

Every call here blocks on the Docker SDK: callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import LogConfig, Mount

from edge_agent.errors import HandlerStartError
from edge_protocol.specs import HandlerSpec

LABEL_DEVICE = "edgefleet.device"
LABEL_HANDLER = "edgefleet.handler"
LABEL_RELEASE = "edgefleet.release"
LABEL_REPLICA = "edgefleet.replica"

SOCKET_ENV = "EDGEFLEET_HANDLER_SOCKET"
IO_DIR_IN_CONTAINER = "/run/edgefleet"
SOCKET_NAME = "handler.sock"
IO_DIR_PREFIX = "edgefleet-io-"
"""How the directory holding one container's socket is named on the host (see remove_device_containers)."""


def hardened_create_args(
    spec: HandlerSpec, *, device_id: str, replica: int, generation: str, io_dir: Path | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``containers.create``: the hardening every handler gets, from its spec; with
    ``io_dir``, that directory (holding the agent's socket) mounted read-only where the handler finds it."""
    limits = spec.limits
    environment = dict(spec.env)
    mounts = []
    if io_dir is not None:
        environment[SOCKET_ENV] = f"{IO_DIR_IN_CONTAINER}/{SOCKET_NAME}"
        mounts.append(Mount(target=IO_DIR_IN_CONTAINER, source=str(io_dir), type="bind", read_only=True))
    return {
        "image": spec.image,
        "command": spec.command,
        # The generation lets a handler's next version start beside the running one during a switch.
        "name": f"edgefleet.{device_id}.{spec.name}.{replica}.{generation}",
        "stdin_open": spec.io != "socket",
        "network_mode": spec.network,
        "read_only": True,
        "tmpfs": {"/tmp": f"size={limits.tmpfs_size},mode=1777"},  # noqa: S108 - inside the container
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "user": "65534:65534",
        "pids_limit": limits.pids,
        "mem_limit": limits.memory,
        "memswap_limit": limits.memory,
        "nano_cpus": int(limits.cpus * 1e9),
        "environment": environment,
        "mounts": mounts,
        "labels": {
            LABEL_DEVICE: device_id,
            LABEL_HANDLER: spec.name,
            LABEL_RELEASE: spec.image,
            LABEL_REPLICA: str(replica),
        },
        "privileged": False,
        # With the engine's default json-file driver every stdio reply was also written to an unrotated file on the
        # device's disk (1.8 GB/h at 5,000 events/s), and the writes stalled the attach stream. The handler's log
        # reaches the agent's log through the attach stream anyway.
        "log_config": LogConfig(type=LogConfig.types.NONE),
    }


def ensure_image(client: docker.DockerClient, spec: HandlerSpec) -> None:
    """The spec's image is present, pulled if it was not; HandlerStartError otherwise."""
    try:
        client.images.get(spec.image)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(spec.image)
        except docker.errors.APIError as exc:
            raise HandlerStartError(spec.name, f"image {spec.image} absent and pull failed: {exc}") from exc
    except docker.errors.APIError as exc:
        raise HandlerStartError(spec.name, f"engine error: {exc}") from exc


def create_and_attach(client: docker.DockerClient, name: str, args: dict[str, Any]) -> tuple[Container, socket.socket]:
    """Create the container from ``args`` (not started) and attach to it: the container, and the attach
    stream's socket (non-blocking, ours to close)."""
    try:
        container = client.containers.create(**args)
    except docker.errors.APIError as exc:
        raise HandlerStartError(name, f"create refused: {exc.explanation or exc}") from exc
    # Attach before start so no early output is lost and nothing is buffered in the HTTP layer.
    stdin = int(args["stdin_open"])
    sock_io = container.attach_socket(params={"stdin": stdin, "stdout": 1, "stderr": 1, "stream": 1})
    raw: socket.socket = getattr(sock_io, "_sock", sock_io)
    # Our own descriptor: the SDK's response objects may close theirs when collected.
    dup = raw.dup()
    dup.setblocking(False)
    sock_io.close()
    # Close the SDK's descriptor now: left to garbage collection, the engine keeps the attach open and a
    # later stop/remove of this container hangs until it is collected.
    raw.close()
    return container, dup


def exit_state(container: Container, timeout: float) -> dict[str, Any]:
    """The engine's ``State`` of a container whose stream ended, once it has exited (waiting up to ``timeout``
    for the engine to see the exit): ``OOMKilled`` and ``ExitCode`` say why. Empty when the engine cannot say."""
    # requests' timeouts and connection errors are OSErrors.
    with contextlib.suppress(docker.errors.APIError, OSError):
        container.wait(timeout=timeout)
    try:
        container.reload()
    except (docker.errors.APIError, OSError):
        return {}
    state = container.attrs.get("State")
    return state if isinstance(state, dict) else {}


def stop_and_remove(container: Container) -> None:
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.stop(timeout=3)
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.remove(force=True)


def remove_device_containers(client: docker.DockerClient, device_id: str, replicas: range | None = None) -> int:
    """Remove every container an earlier run of this device's agent left (found by label, never by name:
    several agents may share one engine, and none touches another's); with ``replicas``, only those replicas
    (an intake worker's own, left by its previous process)."""
    found = client.containers.list(all=True, filters={"label": f"{LABEL_DEVICE}={device_id}"})
    if replicas is not None:
        found = [c for c in found if (c.labels or {}).get(LABEL_REPLICA, "").isdigit()
                 and int(c.labels[LABEL_REPLICA]) in replicas]
    for container in found:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)
        # ... and the socket directory each one mounted (the earlier run died before removing it).
        for mount in container.attrs.get("Mounts") or []:
            source = Path(mount.get("Source") or "")
            if mount.get("Destination") == IO_DIR_IN_CONTAINER and source.name.startswith(IO_DIR_PREFIX):
                shutil.rmtree(source, ignore_errors=True)
    return len(found)


def docker_client(docker_host: str | None) -> docker.DockerClient:
    """A client for ``docker_host``, else DOCKER_HOST / the default socket."""
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise HandlerStartError("*", f"no Docker engine at {docker_host or 'DOCKER_HOST'}: {exc}") from exc
    return client
