"""The whole system on one machine: two brokers, the hub, one agent, a sensor simulator.

Run through ``./dev demo [--duration SECONDS]``. Prints aggregates as the hub stores them until Ctrl-C (or the
duration), then stops everything it started and says so. The device id is unique per run, so the check for
leftover containers cannot be fooled by another run's.
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

import docker
import httpx
import orjson
import paho.mqtt.client as mqtt
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.loopback import free_port  # noqa: E402
from scripts.mosquitto import Mosquitto  # noqa: E402 - the repo root is on sys.path now

console = Console(highlight=False)
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
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-sensors", protocol=mqtt.MQTTv5)
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


def main() -> int:
    parser = argparse.ArgumentParser(description="edgefleet on one machine")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=50.0, help="sensor readings per second")
    parser.add_argument("--window", default="5s", help="aggregation window")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, _signal)
    signal.signal(signal.SIGTERM, _signal)

    device = f"demo-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    brokers: list[Mosquitto] = []
    stop_sensors = threading.Event()
    published = [0]
    seen: set[str] = set()
    events_stored = 0
    code = 0
    try:
        device_broker, cloud_broker = Mosquitto().start(), Mosquitto().start()
        brokers += [device_broker, cloud_broker]
        console.print(f"[bold]brokers[/]: device 127.0.0.1:{device_broker.port} pid {device_broker.pid}, "
                      f"cloud 127.0.0.1:{cloud_broker.port} pid {cloud_broker.pid}")
        api_port = free_port()
        hub_cfg = write(work / "hub.toml", f"""
[broker]
host = "127.0.0.1"
port = {cloud_broker.port}
[store]
url = "sqlite:///{work}/hub.db"
[api]
host = "127.0.0.1"
port = {api_port}
""")
        agent_cfg = write(work / "agent.toml", f"""
device_id = "{device}"
data_dir = "{work}/agent"
[local_broker]
port = {device_broker.port}
[cloud]
port = {cloud_broker.port}
[[handlers]]
name = "temp-c"
image = "edgefleet/temp-c:dev"
[[subscriptions]]
name = "temps"
topic = "sensors/+/temperature"
handler = "temp-c"
window = {{ size = "{args.window}" }}
group_by = ["topic[1]"]
stats = ["count", "mean", "min", "max"]
""")
        logs = work / "logs"
        logs.mkdir()
        hub = subprocess.Popen([BIN / "hub", "serve", "--config", hub_cfg], stdout=(logs / "hub.log").open("wb"),
                               stderr=subprocess.STDOUT)
        procs.append(hub)
        agent = subprocess.Popen([BIN / "edge-agent", "run", "--config", agent_cfg],
                                 stdout=(logs / "agent.log").open("wb"), stderr=subprocess.STDOUT)
        procs.append(agent)
        console.print(f"[bold]hub[/] pid {hub.pid} API http://127.0.0.1:{api_port}; "
                      f"[bold]agent[/] {device} pid {agent.pid}; logs in {logs}")
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=5)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if api.get("/healthz").status_code == 200:
                    break
            if time.monotonic() > deadline or hub.poll() is not None:
                raise RuntimeError(f"the hub did not come up; see {logs / 'hub.log'}")
            time.sleep(0.2)
        threading.Thread(target=sensor_loop, args=(device_broker.port, stop_sensors, args.rate, published),
                         daemon=True, name="sensors").start()
        console.print(f"[bold]sensors[/]: 3 sensors, {args.rate:g} readings/s, 1 in 50 malformed; "
                      "aggregates appear as windows close (Ctrl-C stops)")
        started = time.monotonic()
        while not args.duration or time.monotonic() - started < args.duration:
            time.sleep(1.0)
            for proc, name in ((hub, "hub"), (agent, "agent")):
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} exited with {proc.returncode}; see {logs}")
            rows = api.get("/v1/aggregates", params={"device": device, "limit": 1000}).json()
            for row in sorted(rows, key=lambda r: (r["window_start"], r["group"])):
                if row["window_id"] in seen:
                    continue
                seen.add(row["window_id"])
                events_stored += row["events"]
                c = row["fields"].get("c", {})
                console.print(
                    f"[green]stored[/] {time.strftime('%H:%M:%S', time.localtime(row['window_start']))} "
                    f"{row['group']:<12} events={row['events']:<4} mean_c={c.get('mean', float('nan')):6.2f} "
                    f"min_c={c.get('min', float('nan')):6.2f} max_c={c.get('max', float('nan')):6.2f}"
                )
    except Stop:
        console.print("\n[bold]stopping[/] (interrupted)")
    except Exception as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        code = 1
    finally:
        stop_sensors.set()
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for broker in brokers:
            broker.close()
        left = _leftover_containers(device)
        console.print(f"[bold]summary[/]: {published[0]} readings published, {len(seen)} windows stored "
                      f"covering {events_stored} events; processes stopped: "
                      f"{all(p.poll() is not None for p in procs)}; containers left: {left}")
        if left:
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
