"""Screenshots of the web console for the README: a live hub with simulated devices, each page in headless Chromium.

    .venv/bin/python -m scripts.screenshots [--out docs/screenshots]

Starts a private mosquitto, ``hub serve`` (a token, a signing key, SQLite in a temp dir) and two ``hub simulate``
fleets (six lab devices, two in the plant); declares a handler, a subscription and a second release through the
API; lets windows arrive; starts a rollout; then saves each page at 1280 px wide, and the fleet at 390 px.
Everything it starts it stops. Needs chromium and chromium-driver (scripts/apt-deps.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from hub.desired.keys import init_keys
from scripts.browser import chromium, process, wait_until
from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto

BIN = Path(sys.executable).parent
TOKEN = "screenshots-token"
OLD = "registry.example:5000/temp-c@sha256:" + "1" * 64
NEW = "registry.example:5000/temp-c@sha256:" + "2" * 64
ROOT = Path(__file__).resolve().parent.parent


def _toml(config: dict[str, dict[str, object]]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {value}" if isinstance(value, int) else f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def live_hub(tmp: Path) -> Iterator[str]:
    """mosquitto, ``hub serve`` and two simulated fleets, with a catalog; yields the hub's URL."""
    keys = init_keys(tmp / "keys")
    port = free_port()
    with Mosquitto() as broker:
        config = tmp / "hub.toml"
        config.write_text(_toml({
            "broker": {"host": broker.host, "port": broker.port, "prefix": "shots", "client_id": "hub-shots"},
            "store": {"url": f"sqlite:///{tmp / 'hub.db'}"},
            "api": {"host": "127.0.0.1", "port": port, "token": TOKEN},
            "signing": {"private_key": str(keys.private_path)},
        }))  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        with process([str(BIN / "hub"), "serve", "--config", str(config)], tmp / "hub.log"):
            wait_until(lambda: _answers(url), "hub serve")

            def fleet(name: str, devices: int, label: str) -> contextlib.AbstractContextManager[object]:
                return process([
                    str(BIN / "hub"), "simulate", "--devices", str(devices), "--device-prefix", name,
                    "--broker", f"{broker.host}:{broker.port}", "--prefix", "shots",
                    "--hub-key", str(keys.public_path), "--labels", label, "--api", url, "--token", TOKEN,
                    "--window", "2s", "--aligned", "--report-every", "1s", "--event-rate", "20", "--every", "60s",
                ], tmp / f"simulate-{name}.log")  # fmt: skip

            with fleet("lab", 6, "site=lab"), fleet("plant", 2, "site=plant"):
                yield url


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def prepare(url: str) -> None:
    """The catalog, windows from every lab device, and a rollout in progress."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api:

        def labelled() -> bool:
            devices = api.get("/v1/devices").json()
            return len(devices) == 8 and all(d["labels"] for d in devices)

        wait_until(labelled, "eight labelled devices")
        api.post("/v1/handlers", json={"name": "temp-c", "image": OLD}, params={"version": "1.0"}).raise_for_status()
        spec = {"name": "temps", "topic": "sensors/#", "handler": "temp-c", "window": {"size": "2s"},
                "stats": ["count", "mean", "p50", "p99"]}  # fmt: skip
        api.post("/v1/subscriptions", json={"target": ["site=lab"], "spec": spec}).raise_for_status()
        api.post("/v1/handlers/temp-c/releases", json={"version": "1.1", "image": NEW}).raise_for_status()
        wait_until(lambda: len(api.get("/v1/aggregates", params={"device": "lab-0000", "subscription": "temps",
                                                                 "limit": 40}).json()) >= 40,
                   "40 windows from lab-0000", timeout=120)  # fmt: skip
        body = {"handler": "temp-c", "release": "1.1", "target": ["site=lab"], "canary": 1, "batch": "50%",
                "soak": "20s"}  # fmt: skip
        rollout = api.post("/v1/rollouts", json=body)
        rollout.raise_for_status()
        rid = rollout.json()["id"]
        wait_until(lambda: api.get(f"/v1/rollouts/{rid}").json()["passed"] >= 1, "the canary to pass", timeout=120)


def login(driver: WebDriver, url: str) -> None:
    driver.get(f"{url}/console/login")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith("/console/fleet"))


def shoot(driver: WebDriver, url: str, path: str, out: Path, width: int, ready: str = "main") -> None:
    driver.set_window_size(width, 900)
    driver.get(url + path)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{ready}, .msg.err"))
    for refused in driver.find_elements(By.CSS_SELECTOR, ".msg.err"):
        print(f"warning: {path}: {refused.text}", file=sys.stderr)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(height, 600), 2600))
    driver.save_screenshot(str(out))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


PAGES = [
    ("fleet", "/console/fleet", "#devices"),
    ("fleet-filtered", "/console/fleet?labels=site%3Dplant", "#devices"),
    ("device", "/console/devices/lab-0001", "figure.chart svg"),
    ("catalog", "/console/catalog", ".handler"),
    ("rollouts", "/console/rollouts", "#rollouts"),
    ("rollout", "/console/rollouts/1", "#rollout-state"),
    (
        "aggregates",
        "/console/aggregates?subscription=temps&field=value&stat=max&labels=site%3Dlab&rollup=devices"
        "&every=10s&since=5m",
        "figure.chart svg",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-shots-") as tmp, live_hub(Path(tmp)) as url:
        prepare(url)
        with chromium(1280, 900, hide_scrollbars=True) as driver:
            login(driver, url)
            for name, path, ready in PAGES:
                shoot(driver, url, path, args.out / f"{name}.png", 1280, ready)
            shoot(driver, url, "/console/fleet", args.out / "fleet-390.png", 390, "#devices")
            shoot(driver, url, "/console/rollouts/1", args.out / "rollout-390.png", 390, "#rollout-state")
        with chromium(1280, 900, hide_scrollbars=True) as driver:
            shoot(driver, url, "/console/login", args.out / "login.png", 1280, "#token")


if __name__ == "__main__":
    main()
