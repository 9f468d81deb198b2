"""Hardened handler containers on the real Docker engine (issue 5): what the engine says about a running handler
container (inspect), a root user inside that still cannot write its root filesystem, no route from a handler to
the device broker on the host's loopback, a fork bomb held at the pids limit while the agent keeps serving.

Supervision (restarts, orphans, replicas) is in test_runtime_supervision.py.

Every Docker call of a test that runs an agent in-process goes through a thread: a blocking call on the event
loop would stall the agent under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from docker.types import LogConfig

from edge_agent.runtime.containers import hardened_create_args
from edge_protocol.specs import HandlerSpec
from scripts.mosquitto import Mosquitto
from tests.support.engine import HANDLER_IMAGES, containers_of, ensure_handler_images
from tests.support.mqtt_clients import publish_all
from tests.support.readers import outbox_results
from tests.support.rig import Rig
from tests.support.running import running_agent, wait_for
from tests.support.workloads import TEMP_C, temperature_events, temps_subscription

pytestmark = pytest.mark.integration

FORKBOMB_IMAGE = "edgefleet/forkbomb:dev"
BASE_IMAGE = "edgefleet/base:bookworm"
IMAGES = (*HANDLER_IMAGES, FORKBOMB_IMAGE)


@pytest.fixture(scope="module")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The example handlers plus forkbomb (containers/build.sh builds every handler folder)."""
    return ensure_handler_images(docker_client, IMAGES)


@contextlib.contextmanager
def hardened_container(
    client: docker.DockerClient, spec: HandlerSpec, device: str, **override: Any
) -> Iterator[Container]:
    """A container created exactly as the agent creates a handler's (plus ``override``); removed at exit."""
    args = hardened_create_args(spec, device_id=device, replica=0, generation=secrets.token_hex(3))
    args.update(override)
    container = client.containers.create(**args)
    try:
        yield container
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


# -- 1. hardening, as the engine sees it ------------------------------------------------------------------

LIMITS = {"memory": "96m", "cpus": 0.5, "pids": 48, "tmpfs_size": "8m"}
STATUS_PROBE = """
import os, json
def errno_of(call, *args):
    try:
        call(*args)
    except OSError as exc:
        return exc.errno
    return 0
status = dict(line.split(":", 1) for line in open("/proc/1/status"))
print(json.dumps({
    "uid": status["Uid"].split(), "gid": status["Gid"].split(),
    "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "sockets": [p for p in ("/var/run/docker.sock", "/run/docker.sock", "/run/edgefleet/docker.sock")
                if os.path.exists(p)],
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "io_list": errno_of(os.listdir, "/run/edgefleet"),
    "io_write": errno_of(lambda p: open(p, "w").close(), "/run/edgefleet/x"),
    "io_socket": os.path.exists("/run/edgefleet/handler.sock"),
    "handler_socket": os.environ.get("EDGEFLEET_HANDLER_SOCKET"),
}))
"""


async def test_running_handler_container_is_hardened(
    rig: Rig,
    docker_client: docker.DockerClient,
    images: dict[str, str],
) -> None:
    config = rig.agent_config(
        cloud_port=None,
        handlers=[{**TEMP_C, "limits": LIMITS}],
        subscriptions=[temps_subscription(rig.prefix)],
    )
    async with running_agent(config) as (state, agent_task):
        found = await asyncio.to_thread(containers_of, docker_client, rig.device_id, "temp-c")
        assert [c.id for c in found] == [state.runtimes["temp-c"].container_id]  # type: ignore[attr-defined]
        container = found[0]
        probe = await asyncio.to_thread(container.exec_run, ["python3", "-c", STATUS_PROBE])
        assert not agent_task.done()
    attrs, host = container.attrs, container.attrs["HostConfig"]
    inside = json.loads(probe.output)
    mib = 1024 * 1024
    print(f"\ninspect: ReadonlyRootfs={host['ReadonlyRootfs']} CapDrop={host['CapDrop']} "
          f"SecurityOpt={host['SecurityOpt']} Memory={host['Memory'] // mib}m PidsLimit={host['PidsLimit']} "
          f"NanoCpus={host['NanoCpus']} NetworkMode={host['NetworkMode']} User={attrs['Config']['User']} "
          f"Privileged={host['Privileged']} Mounts={attrs['Mounts']} Tmpfs={host['Tmpfs']}; inside: {inside}")
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == 96 * mib
    assert host["MemorySwap"] == 96 * mib  # no swap on top of the memory limit
    assert host["PidsLimit"] == 48
    assert host["NanoCpus"] == 500_000_000
    assert host["NetworkMode"] == "none"
    assert attrs["Config"]["User"] == "65534:65534"
    assert host["Privileged"] is False
    assert not host["Devices"]
    assert host["Tmpfs"] == {"/tmp": "size=8m,mode=1777"}
    assert host["LogConfig"]["Type"] == "none"  # replies are not written to the device's disk
    # One bind mount: the agent's socket directory, read-only. No Docker socket, no volume.
    assert not host["Binds"]
    (mount,) = attrs["Mounts"]
    assert (mount["Type"], mount["Destination"], mount["RW"]) == ("bind", "/run/edgefleet", False)
    assert Path(mount["Source"]).name.startswith("edgefleet-io-")
    assert not Path(mount["Source"]).exists()  # removed with the container when the agent stopped
    assert not any("docker.sock" in json.dumps(m) for m in attrs["Mounts"])
    assert Path(mount["Source"]).parent.stat().st_mode & 0o777 == 0o700  # the agent's alone on the host
    # What the kernel says about the handler process itself (PID 1 of the container).
    assert probe.exit_code == 0, probe.output
    assert inside["uid"] == ["65534"] * 4
    assert inside["gid"] == ["65534"] * 4
    assert int(inside["cap_eff"], 16) == 0
    assert int(inside["cap_bnd"], 16) == 0
    assert inside["no_new_privs"] == "1"
    assert inside["sockets"] == []
    assert inside["interfaces"] == ["lo"]
    assert inside["io_list"] == 13  # EACCES: the directory is 0711, the socket is reachable by name only
    assert inside["io_write"] in (13, 30)  # EACCES or EROFS: not the handler's to write
    assert inside["io_socket"] is True
    assert inside["handler_socket"] == "/run/edgefleet/handler.sock"


# -- 2. root inside, still a read-only root filesystem ----------------------------------------------------


def test_root_inside_a_hardened_container_cannot_write_its_root_filesystem(
    docker_client: docker.DockerClient, images: dict[str, str], device_id: str
) -> None:
    spec = HandlerSpec(name="as-root", image=BASE_IMAGE, command=["sleep", "300"])
    with hardened_container(docker_client, spec, device_id, user="0:0") as container:
        container.start()
        whoami = container.exec_run(["id", "-u"])
        root_fs = container.exec_run(["touch", "/x"])
        etc = container.exec_run(["sh", "-c", "echo evil >> /etc/passwd"])
        remount = container.exec_run(["mount", "-o", "remount,rw", "/"])
        after_remount = container.exec_run(["touch", "/x"])
        tmp = container.exec_run(["sh", "-c", "touch /tmp/x && echo ok > /tmp/y && cat /tmp/y"])
        print(f"\nas uid {whoami.output.decode().strip()}: touch /x -> {root_fs.exit_code} "
              f"{root_fs.output.decode().strip()!r}; /etc/passwd -> {etc.exit_code}; remount rw -> "
              f"{remount.exit_code} {remount.output.decode().strip()!r}; /tmp -> {tmp.exit_code}")
        assert whoami.exit_code == 0
        assert whoami.output.decode().strip() == "0", "the test needs root inside"
        assert root_fs.exit_code != 0
        assert b"Read-only file system" in root_fs.output
        assert etc.exit_code != 0
        assert b"Read-only file system" in etc.output
        assert remount.exit_code != 0, "no CAP_SYS_ADMIN: the root filesystem cannot be remounted"
        assert after_remount.exit_code != 0
        assert tmp.exit_code == 0, tmp.output
        assert tmp.output.strip() == b"ok"


# -- 3. no route to the device broker ---------------------------------------------------------------------

CONNECT_PROBE = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
except OSError as exc:
    print(f"failed: {type(exc).__name__}: {exc}")
    sys.exit(1)
print("connected")
"""


def test_handler_cannot_reach_the_device_broker_on_the_host_loopback(
    device_broker: Mosquitto, docker_client: docker.DockerClient, images: dict[str, str], device_id: str
) -> None:
    """With network none (the default), the broker on the host's 127.0.0.1 is out of reach; the same probe in
    a container that asks for the host's network connects, so the probe itself is sound."""
    assert device_broker.host == "127.0.0.1"
    outcome: dict[str, tuple[int, str]] = {}
    for network in ("none", "host"):
        spec = HandlerSpec(name=f"probe-{network}", image=BASE_IMAGE, network=network,
                           command=["python3", "-c", CONNECT_PROBE, str(device_broker.port)])
        # The probe answers on stdout, which handlers do not log: read it back through a log driver.
        with hardened_container(docker_client, spec, device_id, log_config=LogConfig(type="json-file")) as container:
            container.start()
            status = container.wait(timeout=30)["StatusCode"]
            outcome[network] = (status, container.logs().decode().strip())
    print(f"\nconnect to 127.0.0.1:{device_broker.port}: {outcome}")
    assert outcome["none"][0] == 1
    assert outcome["none"][1].startswith("failed: ")
    assert outcome["host"] == (0, "connected")


# -- 4. a fork bomb stops at the pids limit ---------------------------------------------------------------

PIDS = 32


async def test_fork_bomb_stops_at_the_pids_limit_and_the_agent_keeps_serving(
    rig: Rig,
    docker_client: docker.DockerClient,
    images: dict[str, str],
) -> None:
    data_dir = rig.data_dir
    config = rig.agent_config(
        cloud_port=None,
        handlers=[{"name": "forkbomb", "image": FORKBOMB_IMAGE, "limits": {"pids": PIDS}, "event_timeout": "30s"},
                  TEMP_C],
        subscriptions=[
            {"name": "bomb", "topic": f"{rig.prefix}/bomb/+", "handler": "forkbomb", "window": {"size": "1s"},
             "stats": ["count", "min", "max"]},
            temps_subscription(rig.prefix),
        ],
    )
    bomb = (f"{rig.prefix}/bomb/1", b"{}")
    temps, _celsius = temperature_events(rig.prefix, 50, seed=5)

    def bomb_results() -> dict[str, Any]:
        """The forks/errno/reaped FieldStates summed over the bomb subscription's closed windows."""
        rows = [r for r in outbox_results(data_dir / "outbox.sqlite") if r["subscription"] == "bomb"]
        merged: dict[str, Any] = {}
        for row in rows:
            for name, field in row["fields"].items():
                m = merged.setdefault(name, {"count": 0, "min": field["min"], "max": field["max"]})
                m["count"] += field["count"]
                m["min"], m["max"] = min(m["min"], field["min"]), max(m["max"], field["max"])
        return merged

    def bombs_answered() -> int:
        return int(bomb_results().get("forks", {}).get("count", 0))

    async with running_agent(config) as (state, agent_task):
        bomber: Any = state.runtimes["forkbomb"]
        first_container = bomber.container_id
        started = time.monotonic()
        await asyncio.to_thread(publish_all, rig.broker, [bomb])
        await wait_for(lambda: bombs_answered() >= 1, timeout=30, what="the fork bomb's answer committed",
                       detail=state.counters)
        bomb_seconds = time.monotonic() - started
        # Afterwards: another subscription's events, and a second bomb on the same (reaped) container.
        await asyncio.to_thread(publish_all, rig.broker, [*temps, bomb])
        await wait_for(lambda: state.dispatchers["temps"].counters.processed >= len(temps) and bombs_answered() >= 2,
                       timeout=30, what="other events and a second bomb processed", detail=state.counters)
        results = bomb_results()
        running = await asyncio.to_thread(containers_of, docker_client, rig.device_id, "forkbomb")
        print(f"\nfork bomb under pids={PIDS}: {results} (first answer after {bomb_seconds:.2f}s); "
              f"then {state.dispatchers['temps'].counters.processed} other events processed")
        forks = results["forks"]
        assert 16 <= forks["min"] <= forks["max"] < PIDS, "forks stopped by the limit, below it"
        assert results["errno"]["min"] == results["errno"]["max"] == 11, "fork failed with EAGAIN"
        assert results["reaped"]["min"] == forks["min"]
        assert state.dispatchers["bomb"].counters.dead_lettered.total() == 0
        assert state.dispatchers["temps"].counters.processed == len(temps)
        assert bomber.restarts == 0
        assert [c.id for c in running] == [first_container]
        assert not agent_task.done()
