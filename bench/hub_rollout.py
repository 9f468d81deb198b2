"""Rollout time: a canary plus four batches (``--canary 1 --batch 25%``) over simulated devices, minus the soaks.

The simulated devices verify the hub's signatures and report every second (``hub simulate --report-every 1s``,
as the rollout integration test's agents): a handler ``sim-h`` at release 1.0 runs everywhere, then 1.1 is
rolled out to every device. The figure is the rollout's ``finished_at - created_at`` minus the configured soak
of each step: what the hub's controller, desired-state publishing and the devices' reports add.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.hub import broker
from bench.hub_procs import HubServer, Simulator
from hub.desired.keys import init_keys

HANDLER = "sim-h"
IMAGES = {"1.0": f"sim/handler@sha256:{'1' * 64}", "1.1": f"sim/handler@sha256:{'2' * 64}"}


def _ok(response: httpx.Response) -> Any:
    if response.is_error:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json()


def _wait(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:g}s")
        time.sleep(interval)


def rollout(devices: int, soak: float) -> dict[str, Any]:
    with broker() as mq, tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        keys = init_keys(Path(tmp) / "keys")
        hub = HubServer(Path(tmp), mq.port, signing_key=keys.private_path).start()
        sim = None
        try:
            sim = Simulator(mq.port, devices, "--hub-key", str(keys.public_path), "--report-every", "1s",
                            "--rate", "0.1", "--window", "10s", "--device-prefix", "ro")  # fmt: skip
            sim.wait_event("ready", timeout=60)
            hub.wait_devices(devices, timeout=60)
            with hub.api() as http:
                return _roll(http, devices, soak)
        finally:
            if sim is not None:
                sim.close()
            hub.stop()


def _runs(http: httpx.Client, image: str) -> int:
    return sum(
        any(h["name"] == HANDLER and h["image"] == image and h["healthy"] for h in dev["handlers"])
        for dev in _ok(http.get("/v1/devices"))
    )


def _roll(http: httpx.Client, devices: int, soak: float) -> dict[str, Any]:
    started = time.monotonic()
    _ok(http.post("/v1/handlers", params={"version": "1.0"}, json={"name": HANDLER, "image": IMAGES["1.0"]}))
    spec = {"name": "sim-s", "topic": "sim/#", "handler": HANDLER, "window": {"size": "10s"}}
    _ok(http.post("/v1/subscriptions", json={"target": [], "spec": spec}))
    _wait(lambda: _runs(http, IMAGES["1.0"]) == devices, 120, f"release 1.0 running on {devices} devices")
    first_apply = time.monotonic() - started
    _ok(http.post(f"/v1/handlers/{HANDLER}/releases", json={"version": "1.1", "image": IMAGES["1.1"]}))
    body = {"handler": HANDLER, "release": "1.1", "canary": 1, "batch": "25%", "soak": f"{soak}s",
            "health_timeout": "60s"}  # fmt: skip
    rid = _ok(http.post("/v1/rollouts", json=body))["id"]
    done = _wait(
        lambda: (r := _ok(http.get(f"/v1/rollouts/{rid}")))["state"] not in ("running", "paused") and r,
        300, "the rollout to finish", interval=0.25,
    )  # fmt: skip
    total = done["finished_at"] - done["created_at"]
    steps = len(done["steps"])
    return {
        "devices": devices,
        "state": done["state"],
        "reason": done.get("reason"),
        "steps": [len(step) for step in done["steps"]],
        "soak_s": soak,
        "total_s": round(total, 2),
        "seconds": round(total - steps * soak, 2),
        "per_step_s": round((total - steps * soak) / steps, 2),
        "first_desired_applied_s": round(first_apply, 2),
        "running_new_release": _runs(http, IMAGES["1.1"]),
    }
