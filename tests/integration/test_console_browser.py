"""Issue 16's acceptance: the web console in a real headless Chromium, against ``hub serve`` and simulated devices.

Log in, see devices come online (live refresh, no reload), filter by label, open a device and see its chart with
points, start a rollout, pause and resume it, watch it finish, and see an action refused without a valid
session and with a bad CSRF token. Selenium drives Debian's chromium through the system chromedriver (never
Selenium Manager: there is no network).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from hub.desired.keys import PUBLIC_NAME, init_keys
from scripts.browser import chromium, process, wait_until
from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.support.toml import to_toml

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TOKEN = "console-browser-token"
OLD = "127.0.0.1:5000/temp-c@sha256:" + "1" * 64
NEW = "127.0.0.1:5000/temp-c@sha256:" + "2" * 64
WAIT = 60.0
T = TypeVar("T")


@contextlib.contextmanager
def hub(cloud: Mosquitto, prefix: str, tmp: Path) -> Iterator[str]:
    """``hub serve`` with a token and a signing key; yields its URL once /healthz answers."""
    keys = init_keys(tmp / "keys")
    port = free_port()
    config = tmp / "hub.toml"
    config.write_text(to_toml({
        "broker": {"host": cloud.host, "port": cloud.port, "prefix": prefix, "client_id": f"hub-{prefix}"},
        "store": {"url": f"sqlite:///{tmp / 'hub.db'}"},
        "api": {"host": "127.0.0.1", "port": port, "token": TOKEN},
        "signing": {"private_key": str(keys.private_path)},
    }))  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with process([str(BIN / "hub"), "serve", "--config", str(config)], tmp / "hub.log") as proc:

        def up() -> bool:
            assert proc.poll() is None, (tmp / "hub.log").read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, "hub serve to answer /healthz")
        yield url


def simulate(cloud: Mosquitto, prefix: str, url: str, tmp: Path, name: str, devices: int, label: str):  # type: ignore[no-untyped-def]
    return process([
        str(BIN / "hub"), "simulate", "--devices", str(devices), "--device-prefix", name,
        "--broker", f"{cloud.host}:{cloud.port}", "--prefix", prefix, "--hub-key", str(tmp / "keys" / PUBLIC_NAME),
        "--labels", label, "--api", url, "--token", TOKEN, "--window", "2s", "--rate", "1",
        "--report-every", "1s", "--event-rate", "20", "--every", "30s",
    ], tmp / f"simulate-{name}.log")  # fmt: skip


def swapped(error: WebDriverException) -> bool:
    """Whether ``error`` says the element was replaced under the driver.

    Pages replace their live fragment every few seconds. Chromium reports an element detached by that swap as
    stale, or, when the swap lands inside the driver's own call, as an inspector error about a node that no
    longer belongs to the document."""
    return isinstance(error, StaleElementReferenceException) or "does not belong to the document" in error.msg


def on_live_page(act: Callable[[], T]) -> T:
    """``act()`` again when the live refresh swapped an element under it (the swap is over by the next try)."""
    for _ in range(5):
        try:
            return act()
        except WebDriverException as error:
            if not swapped(error):
                raise
    raise AssertionError("the page was replaced by the live refresh on every one of 5 tries")


def rows(driver: WebDriver) -> list[str]:
    """The device ids of the fleet table, read in one script so that no swap can fall between lookup and read."""
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll('#devices tr[data-device]'), e => e.dataset.device);"
    )
    return list(found)


def text_of(driver: WebDriver, css: str) -> str:
    """The rendered text of the first element matching ``css``, "" if none, read in one script."""
    text = driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)
    return str(text).strip()


def click_action(driver: WebDriver, command: str) -> None:
    on_live_page(lambda: driver.find_element(By.ID, f"action-{command}").click())
    with contextlib.suppress(NoAlertPresentException):
        WebDriverWait(driver, 5).until(lambda d: d.switch_to.alert).accept()


def test_console_in_a_browser(cloud_broker: Mosquitto, topic_prefix: str, tmp_path: Path) -> None:
    with (
        hub(cloud_broker, topic_prefix, tmp_path) as url,
        chromium() as driver,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api,
    ):
        wait = WebDriverWait(driver, WAIT, poll_frequency=0.2)

        # 1. Nothing but the login form without a session; a wrong token is refused, the right one admits.
        driver.get(f"{url}/console/fleet")
        wait.until(lambda d: "/console/login" in d.current_url)
        driver.find_element(By.ID, "token").send_keys("wrong-token")
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait.until(lambda d: "that token is not valid" in text_of(d, "#error"))
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait.until(lambda d: d.current_url.endswith("/console/fleet"))
        assert "0 devices" in text_of(driver, "#fleet-summary")

        # 2. Devices come online while the page is open: the live refresh shows them without a reload.
        marker = driver.find_element(By.TAG_NAME, "h1")
        with simulate(cloud_broker, topic_prefix, url, tmp_path, "lab", 3, "site=lab"), \
                simulate(cloud_broker, topic_prefix, url, tmp_path, "plant", 1, "site=plant"):  # fmt: skip
            wait.until(lambda d: len(rows(d)) == 4 and "4 online" in text_of(d, "#fleet-summary"))
            assert marker.is_displayed()  # the same document: refreshed in place, not reloaded
            wait.until(lambda d: "site=plant" in text_of(d, "#devices"))

            # 3. Filter by label.
            field = driver.find_element(By.ID, "labels")
            field.send_keys("site=plant")
            driver.find_element(By.CSS_SELECTOR, "form.filter button").click()
            wait.until(lambda d: rows(d) == ["plant-0000"])
            assert "1 device matching site=plant: 1 online, 0 offline" in text_of(driver, "#fleet-summary")

            # The catalog: temp-c at 1.0, a subscription for the lab, release 1.1 recorded (through the API).
            handler = {"name": "temp-c", "image": OLD}
            assert api.post("/v1/handlers", json=handler, params={"version": "1.0"}).status_code == 201
            spec = {"name": "temps", "topic": "sensors/#", "handler": "temp-c", "window": {"size": "1s"},
                    "stats": ["count", "mean", "p99"]}  # fmt: skip
            sub = {"target": ["site=lab"], "spec": spec}
            assert api.post("/v1/subscriptions", json=sub).status_code == 201
            assert api.post("/v1/handlers/temp-c/releases", json={"version": "1.1", "image": NEW}).status_code == 201

            # 4. A device's page: its chart gets points as windows arrive.
            driver.get(f"{url}/console/fleet?labels=site%3Dlab")
            wait.until(lambda d: rows(d) == ["lab-0000", "lab-0001", "lab-0002"])
            on_live_page(lambda: driver.find_element(By.LINK_TEXT, "lab-0001").click())
            wait.until(lambda d: "Device lab-0001" in text_of(d, "h1"))
            wait.until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.chart[data-subscription=temps] svg .dot")) >= 3
            )
            assert "temp-c" in text_of(driver, "#handlers")

            # 5. Start a rollout of 1.1 to the lab from the form, pause it, resume it, watch it finish.
            driver.find_element(By.LINK_TEXT, "Rollouts").click()
            form = driver.find_element(By.CSS_SELECTOR, "form.rollout-form")
            for name, value in {"release": "1.1", "target": "site=lab", "canary": "1", "batch": "50%", "soak": "4s",
                                "health_timeout": "60s"}.items():  # fmt: skip
                box = form.find_element(By.NAME, name)
                box.clear()
                box.send_keys(value)
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait.until(lambda d: "rollout 1 of temp-c to 1.1 started" in text_of(d, "#message"))
            click_action(driver, "pause")
            wait.until(lambda d: "rollout 1 paused" in text_of(d, "#message"))
            assert text_of(driver, "#rollout-state") == "paused"
            assert api.get("/v1/rollouts/1").json()["state"] == "paused"
            click_action(driver, "resume")
            wait.until(lambda d: "rollout 1 resumed" in text_of(d, "#message"))
            WebDriverWait(driver, 120, poll_frequency=0.5).until(lambda d: text_of(d, "#rollout-state") == "completed")
            assert "3 of 3 devices passed" in text_of(driver, "#rollout-progress")
            assert api.get("/v1/rollouts/1").json()["state"] == "completed"

            # 6. Refused: a forged CSRF token, then no session at all. The rollout stays completed.
            driver.execute_script(
                "document.querySelector('#action-undo').form.querySelector('[name=csrf]').value = 'forged';"
            )
            click_action(driver, "undo")
            wait.until(lambda d: "CSRF token does not match" in text_of(d, "#error"))
            assert api.get("/v1/rollouts/1").json()["state"] == "completed"
            driver.get(f"{url}/console/rollouts/1")
            wait.until(lambda d: d.find_elements(By.ID, "action-undo"))
            driver.delete_cookie("edgefleet_console")
            click_action(driver, "undo")
            wait.until(lambda d: "not logged in" in text_of(d, "#error"))
            assert api.get("/v1/rollouts/1").json()["state"] == "completed"
            driver.get(f"{url}/console/rollouts/1")
            wait.until(lambda d: "/console/login" in d.current_url)
