"""The whole system on one machine, in managed mode: two brokers, a registry, the hub, one agent, sensors.

Run through ``./dev demo [--duration SECONDS]``. The hub signs each device's desired state (``hub keys init``;
the agent holds the public key), the example handler runs at release 1.0, pulled by digest from a loopback
registry, and once aggregates are stored a staged rollout to release 1.1 (the v2 image) advances through its
gates. Prints the console's URL and an API token first, then aggregates as the hub stores them and one line per
rollout change, until Ctrl-C (or the duration); then stops everything it started and says so. The device id
is unique per run, so the check for leftover containers cannot be fooled by another run's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The repo root is on sys.path now.
from scripts.demo_managed import (  # noqa: E402
    NEW,
    OLD,
    Catalog,
    Releases,
    RolloutWatch,
    agent_toml,
    create_token,
    hub_toml,
    init_keys,
    simulate_argv,
    wait_until,
)
from scripts.loopback import free_port  # noqa: E402
from scripts.mosquitto import Mosquitto  # noqa: E402
from scripts.registry import Registry  # noqa: E402

console = Console(highlight=False, soft_wrap=True)  # long lines (image digests) stay whole
BIN = Path(sys.executable).parent


class Stop(Exception):
    """Ctrl-C or SIGTERM: leave the main loop and clean up."""


def _signal(_sig: int, _frame: object) -> None:
    raise Stop


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sensor_loop(port: int, stop: threading.Event, rate: float, published: list[int]) -> None:
    """Three temperature sensors in Fahrenheit; one reading in fifty is malformed on purpose."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-sensors", protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    n = 0
    try:
        while not stop.wait(1.0 / rate):
            n += 1
            sensor = f"s{n % 3 + 1}"
            payload = b"garbled" if n % 50 == 0 else orjson.dumps({"f": round(60 + 30 * random.random(), 2)})
            client.publish(f"sensors/{sensor}/temperature", payload, qos=1)
            published[0] = n
    finally:
        client.loop_stop()
        client.disconnect()


class Processes:
    """The daemons the demo runs (hub, agent, simulator), each in its own process group so that a Ctrl-C in
    the terminal reaches the demo alone, which then stops them in reverse order: the agent drains before the
    hub goes."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    process_group=0)  # fmt: skip
        self.procs.append((name, proc))
        return proc

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} exited with {proc.returncode}; see {self.logs / name}.log")

    def stop(self) -> list[str]:
        stopped = []
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            stopped.append(f"{name} {proc.pid}")
        return stopped

    @property
    def all_stopped(self) -> bool:
        return all(proc.poll() is not None for _, proc in self.procs)


def print_window(row: dict[str, Any]) -> None:
    """One stored window: its start, its group (the sensor), Celsius statistics, and the handler release(s)
    that made its values (temp-c puts its version in every result as "v")."""
    c, v = row["fields"].get("c", {}), row["fields"].get("v", {})
    release = "?" if not v else f"{v['min']:g}" if v["min"] == v["max"] else f"{v['min']:g}+{v['max']:g}"
    nan = float("nan")
    console.print(
        f"[green]stored[/] {time.strftime('%H:%M:%S', time.localtime(row['window_start']))} "
        f"{row['group'].rpartition('=')[2]:<3} events={row['events']:<4} "
        f"C mean={c.get('mean', nan):5.2f} min={c.get('min', nan):5.2f} max={c.get('max', nan):5.2f} v{release}"
    )


class Demo:
    """What one run started, so that whatever happens, :meth:`close` stops exactly that."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = f"demo-{uuid.uuid4().hex[:6]}"
        self.devices = [self.device]
        self.work = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.procs = Processes(self.logs)
        self.brokers: list[Mosquitto] = []
        self.releases: Releases | None = None
        self.stop_sensors = threading.Event()
        self.published = [0]
        self.seen: set[str] = set()
        self.events_stored = 0
        self.watch: RolloutWatch | None = None

    def set_up(self) -> tuple[httpx.Client, Catalog]:
        """Brokers, keys, token, registry and releases, hub, agent, catalog, simulated devices: until every
        device runs release 1.0."""
        args, device, work = self.args, self.device, self.work
        # Each one is recorded before it starts, so that a Ctrl-C at any moment leaves nothing running.
        device_broker, cloud_broker = Mosquitto(), Mosquitto()
        self.brokers += [device_broker, cloud_broker]
        device_broker.start()
        cloud_broker.start()
        self.device_port = device_broker.port
        console.print(
            f"[bold]brokers[/]: device 127.0.0.1:{device_broker.port} pid {device_broker.pid}, "
            f"cloud 127.0.0.1:{cloud_broker.port} pid {cloud_broker.pid}"
        )
        private_key, public_key = init_keys(work / "keys")
        api_port = free_port()
        hub_cfg = write(work / "hub.toml", hub_toml(work, cloud_broker.port, api_port, private_key))
        token = create_token(hub_cfg)
        self.releases = Releases(Registry())
        registry = self.releases.registry.start()
        console.print(f"[bold]registry[/] {registry.url} pid {registry.pid}: pushing temp-c {OLD} and {NEW}")
        refs = self.releases.push()
        for version, ref in refs.items():
            console.print(f"  release {version}: {ref}")

        hub = self.procs.start("hub", [str(BIN / "hub"), "serve", "--config", str(hub_cfg)])
        url = f"http://127.0.0.1:{api_port}"
        api = httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {token}"})
        wait_until(lambda: api.get("/healthz").status_code == 200, "the hub", 30, self.procs.check)
        console.print(f"[bold]hub[/] pid {hub.pid}, signing desired state with {private_key}")
        console.print(f"[bold]console[/]: {url}/console  (log in with the token below)")
        console.print(f"[bold]token[/]: {token}")
        console.print(f"[bold]cli[/]: EDGEFLEET_HUB_URL={url} EDGEFLEET_HUB_TOKEN=<the token> hub rollout list")

        agent_cfg = write(work / "agent.toml", agent_toml(work, device, device_broker.port, cloud_broker.port,
                                                          public_key))  # fmt: skip
        agent = self.procs.start("agent", [str(BIN / "edge-agent"), "run", "--config", str(agent_cfg)])
        console.print(f"[bold]agent[/] {device} pid {agent.pid}, managed: it runs only what the hub signs; "
                      f"logs in {self.logs}")  # fmt: skip
        catalog = Catalog(api)
        wait_until(lambda: catalog.known([device]), f"the hub to hear from {device}", 60, self.procs.check)
        catalog.declare(device, refs, args.window)
        console.print(f"[bold]catalog[/]: {device} labelled site=demo; handler temp-c at {OLD}, release {NEW}; "
                      "subscription temps targeted at site=demo")  # fmt: skip
        if args.simulated > 0:
            argv = simulate_argv(args.simulated, device, cloud_broker.port, public_key, url, token, args.window)
            sim = self.procs.start("simulator", argv)
            self.devices += [f"{device}-sim-{n:04d}" for n in range(args.simulated)]
            console.print(f"[bold]simulator[/] pid {sim.pid}: {', '.join(self.devices[1:])} (in the console; "
                          "their windows are not printed here)")  # fmt: skip
        wait_until(lambda: all(catalog.runs(d, refs[OLD]) for d in self.devices),
                   f"release {OLD} pulled and running on {', '.join(self.devices)}", 120, self.procs.check)  # fmt: skip
        console.print(f"[bold]running[/]: temp-c {OLD} on {len(self.devices)} devices")
        return api, catalog

    def run(self, api: httpx.Client, catalog: Catalog) -> None:
        """Sensors on; print stored windows and the rollout's changes until the duration (or Ctrl-C)."""
        args = self.args
        sensors = (self.device_port, self.stop_sensors, args.rate, self.published)
        threading.Thread(target=sensor_loop, args=sensors, daemon=True, name="sensors").start()
        console.print(f"[bold]sensors[/]: 3 sensors, {args.rate:g} readings/s, 1 in 50 malformed; aggregates "
                      f"appear as windows close; the rollout to {NEW} starts after {args.rollout_after:g}s "
                      "(Ctrl-C stops)")  # fmt: skip
        started = time.monotonic()
        while not args.duration or time.monotonic() - started < args.duration:
            time.sleep(1.0)  # the pace of the printout, not a synchronisation
            self.procs.check()
            rows = api.get("/v1/aggregates", params={"device": self.device, "limit": 1000}).json()
            for row in sorted(rows, key=lambda r: (r["window_start"], r["group"])):
                if row["window_id"] not in self.seen:
                    self.seen.add(row["window_id"])
                    self.events_stored += row["events"]
                    print_window(row)
            if self.watch is None and self.seen and time.monotonic() - started >= args.rollout_after:
                self.watch = RolloutWatch(catalog, catalog.start_rollout())
            if self.watch is not None and not self.watch.finished:
                for line in self.watch.poll():
                    console.print(f"[bold magenta]rollout[/] {time.strftime('%H:%M:%S')} {line}")

    def close(self) -> bool:
        """Stop everything, say so; False when a container was left behind (and had to be removed)."""
        self.stop_sensors.set()
        stopped = self.procs.stop()
        for broker in self.brokers:
            broker.close()
        references = self.releases.close() if self.releases is not None else 0
        left = _leftover_containers(self.device)
        console.print(f"[bold]stopped[/]: {', '.join(stopped) or 'nothing'}, the registry and "
                      f"{len(self.brokers)} brokers; {references} pulled image references removed")  # fmt: skip
        rollout = self.watch.state if self.watch is not None else "not started"
        console.print(f"[bold]summary[/]: {self.published[0]} readings published, {len(self.seen)} windows stored "
                      f"covering {self.events_stored} events; rollout: {rollout}; "
                      f"processes stopped: {self.procs.all_stopped}; containers left: {left}")  # fmt: skip
        return left == 0


def main() -> int:
    parser = argparse.ArgumentParser(description="edgefleet on one machine, managed by the hub")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=50.0, help="sensor readings per second")
    parser.add_argument("--window", default="5s", help="aggregation window")
    parser.add_argument("--rollout-after", type=float, default=20.0,
                        help="start the rollout to 1.1 this many seconds after the sensors start, "
                        "once aggregates are stored")  # fmt: skip
    parser.add_argument("--simulated", type=int, default=2, help="simulated devices (hub simulate) beside the agent")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, _signal)
    signal.signal(signal.SIGTERM, _signal)
    demo = Demo(args)
    code = 0
    try:
        demo.run(*demo.set_up())
    except Stop:
        console.print("\n[bold]stopping[/] (interrupted)")
    except Exception as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        code = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not demo.close():
            code = 1
    return code


def _leftover_containers(device: str) -> int:
    try:
        client = docker.from_env()
        found = client.containers.list(all=True, filters={"label": f"edgefleet.device={device}"})
    except docker.errors.DockerException:
        return 0
    for c in found:
        with contextlib.suppress(docker.errors.DockerException):
            c.remove(force=True)
    return len(found)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
