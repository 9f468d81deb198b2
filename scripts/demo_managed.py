"""The demo's managed mode: signing keys, an API token, a registry holding two releases, the catalog, a rollout.

What an operator does with the `hub` CLI and the API, done in order for ``scripts/demo.py``: ``hub keys init``
(the agent gets the public key), ``hub token create demo`` (for the console and the API), the example handler's
two builds pushed to a loopback registry and pinned by digest (releases 1.0 and 1.1), the device labelled,
the handler and a subscription targeted at the label declared, and later a staged rollout to 1.1 with short
gates, watched until it finishes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from scripts.registry import Registry, push_image, remove_local_copies

BIN = Path(sys.executable).parent
HANDLER = "temp-c"
SUBSCRIPTION = "temps"
LABEL = ("site", "demo")
# Release version -> the local image pushed for it (containers/build.sh builds both).
RELEASES = {"1.0": "edgefleet/temp-c:dev", "1.1": "edgefleet/temp-c-v2:dev"}
OLD, NEW = "1.0", "1.1"
# Short gates, so that the rollout finishes within a minute: each device must report the new digest healthy,
# then handle at least MIN_EVENTS events within the error and lag limits for SOAK.
ROLLOUT = {"canary": 1, "batch": "100%", "soak": "5s", "min_events": 10, "health_timeout": "60s",
           "max_error_rate": 0.05, "max_lag_ms": 2000}  # fmt: skip
FINISHED = ("completed", "halted", "aborted", "undone")


def wait_until(check: Callable[[], bool], what: str, timeout: float, alive: Callable[[], None] = lambda: None) -> None:
    """Poll `check` until it holds; `alive` raises when something the wait depends on has died."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def _hub_cli(*args: str) -> str:
    result = subprocess.run([str(BIN / "hub"), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"hub {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def init_keys(directory: Path) -> tuple[Path, Path]:
    """``hub keys init``: the private key stays with the hub, the public key goes to the agent."""
    info = json.loads(_hub_cli("keys", "init", "--dir", str(directory), "--json"))
    return Path(info["private_key"]), Path(info["public_key"])


def create_token(hub_config: Path, name: str = "demo") -> str:
    """``hub token create demo``: stored hashed in the hub's database, shown once."""
    return _hub_cli("token", "create", name, "--config", str(hub_config)).strip()


@dataclass
class Releases:
    """The loopback registry and what was pushed to it: version -> `127.0.0.1:PORT/temp-c@sha256:...`."""

    registry: Registry
    refs: dict[str, str] = field(default_factory=dict)

    def push(self) -> dict[str, str]:
        """Push each release's image and drop the engine's references to them, so the agent really pulls."""
        client = docker.from_env()
        repository = self.registry.repository(HANDLER)
        try:
            for version, image in RELEASES.items():
                self.refs[version] = push_image(client, image, repository, version)
            remove_local_copies(client, self.registry.host_port)
        finally:
            client.close()
        return self.refs

    def close(self) -> int:
        """Stop the registry, delete its storage and the engine's references to it; returns how many there were."""
        self.registry.close()
        try:
            client = docker.from_env()
        except docker.errors.DockerException:
            return 0
        try:
            return len(remove_local_copies(client, self.registry.host_port))
        except docker.errors.DockerException:
            return 0
        finally:
            client.close()


def hub_toml(work: Path, broker_port: int, api_port: int, private_key: Path) -> str:
    return f"""
[broker]
host = "127.0.0.1"
port = {broker_port}
[store]
url = "sqlite:///{work}/hub.db"
[api]
host = "127.0.0.1"
port = {api_port}
[signing]
private_key = "{private_key}"
"""


def agent_toml(work: Path, device: str, device_port: int, cloud_port: int, public_key: Path) -> str:
    """A managed agent: no handlers or subscriptions of its own, only what the hub signs for it."""
    return f"""
device_id = "{device}"
data_dir = "{work}/agent"
hub_public_key_file = "{public_key}"
[local_broker]
port = {device_port}
[cloud]
port = {cloud_port}
report_interval = "1s"
resend_after = "3s"
[runtime]
probation = "5s"
"""


def simulate_argv(
    devices: int, device: str, broker_port: int, public_key: Path, api: str, token: str, window: str
) -> list[str]:
    """``hub simulate``: virtual devices with the same label, verifying the same signed desired state."""
    return [
        str(BIN / "hub"), "simulate", "--devices", str(devices), "--device-prefix", f"{device}-sim",
        "--broker", f"127.0.0.1:{broker_port}", "--hub-key", str(public_key), "--labels", "=".join(LABEL),
        "--api", api, "--token", token, "--window", window, "--report-every", "1s", "--event-rate", "20",
        "--every", "60s",
    ]  # fmt: skip


class Catalog:
    """The API calls of the managed set-up and of the rollout, with the demo's token."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api

    def known(self, devices: list[str]) -> bool:
        reply = self.api.get("/v1/devices")
        return reply.status_code == 200 and {d["id"] for d in reply.json()} >= set(devices)

    def declare(self, device: str, refs: dict[str, str], window: str) -> None:
        """Label the device, declare the handler at 1.0, release 1.1, and a subscription targeted at the label."""
        key, value = LABEL
        self._ok(self.api.put(f"/v1/devices/{device}/labels", json={"set": {key: value}}))
        self._ok(self.api.post("/v1/handlers", json={"name": HANDLER, "image": refs[OLD]}, params={"version": OLD}))
        self._ok(self.api.post(f"/v1/handlers/{HANDLER}/releases", json={"version": NEW, "image": refs[NEW]}))
        spec = {
            "name": SUBSCRIPTION, "topic": "sensors/+/temperature", "handler": HANDLER, "window": {"size": window},
            "group_by": ["topic[1]"], "stats": ["count", "mean", "min", "max"],
        }  # fmt: skip
        self._ok(self.api.post("/v1/subscriptions", json={"target": [f"{key}={value}"], "spec": spec}))

    def runs(self, device: str, image: str) -> bool:
        """Whether the device reports the handler running `image`, healthy."""
        reply = self.api.get(f"/v1/devices/{device}")
        if reply.status_code != 200:
            return False
        return any(h["name"] == HANDLER and h["image"] == image and h["healthy"] for h in reply.json()["handlers"])

    def start_rollout(self) -> int:
        body = {"handler": HANDLER, "release": NEW, "target": ["=".join(LABEL)], **ROLLOUT}
        return int(self._ok(self.api.post("/v1/rollouts", json=body))["id"])

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        rollout: dict[str, Any] = self._ok(self.api.get(f"/v1/rollouts/{rollout_id}"))
        return rollout

    @staticmethod
    def _ok(reply: httpx.Response) -> Any:
        if reply.status_code >= 400:
            raise RuntimeError(f"{reply.request.method} {reply.request.url.path}: {reply.status_code} {reply.text}")
        return reply.json()


class RolloutWatch:
    """The rollout's story: a line when it starts, then one per change of its state, step or any device's
    status in the step (assigned, soaking, passed...)."""

    def __init__(self, catalog: Catalog, rollout_id: int) -> None:
        self.catalog, self.id = catalog, rollout_id
        self.state = "running"
        self._last: object = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def poll(self) -> Iterator[str]:
        r = self.catalog.rollout(self.id)
        self.state = r["state"]
        devices = sorted(r["devices"], key=lambda d: (d["step"], d["device"]))
        key = (r["state"], r["step"], [(d["device"], d["status"]) for d in devices])
        if key == self._last:
            return
        head = f"#{self.id} {r['handler']} {r['previous_release']} -> {r['release']}"
        if self._last is None:
            yield (f"{head} started: {len(r['steps'])} steps (canary {r['canary']}, then {r['batch']}); "
                   f"each device healthy within {r['health_timeout']}, then a {r['soak']} soak with "
                   f">= {r['min_events']} events and an error rate <= {r['max_error_rate']:.0%}")  # fmt: skip
        self._last = key
        if r["state"] in ("running", "paused"):
            who = ", ".join(f"{d['device']} {d['status']}" for d in devices if d["step"] == r["step"])
            yield f"{head}: {r['state']}, step {r['step']}/{len(r['steps'])}: {who}"
        else:
            reason = f"; {r['reason']}" if r.get("reason") else ""
            yield f"{head}: {r['state']} ({r['passed']}/{r['planned']} devices passed{reason})"
