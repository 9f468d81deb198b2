"""``hub release`` and ``hub rollout`` against the real API in process (a fake registry behind it)."""

from __future__ import annotations

import asyncio
import json
import warnings
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from hub.api.app import create_app
from hub.cli import app as cli
from hub.cli import common as cli_common
from hub.cli.client import HubClient
from hub.db.store import Store
from hub.desired.image_registry import DigestResolver
from hub.desired.publisher import DesiredPublisher
from hub.rollouts.controller import RolloutController
from tests.unit.hub.conftest import NOW

REG = "127.0.0.1:5000"
DIGESTS = {"1.0": "sha256:" + "1" * 64, "1.1": "sha256:" + "2" * 64}


def registry(request: httpx.Request) -> httpx.Response:
    digest = DIGESTS.get(request.url.path.rsplit("/", 1)[-1])
    return httpx.Response(200, headers={"Docker-Content-Digest": digest}) if digest else httpx.Response(404)


@pytest.fixture(autouse=True)
def in_process_api(fleet_store: Store, publisher: DesiredPublisher, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = DigestResolver(transport=httpx.MockTransport(registry))
    app = create_app(fleet_store, clock=lambda: NOW, desired=publisher, resolver=resolver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    def client(api: str, token: str | None) -> HubClient:
        hub = HubClient(api, token)
        hub._http.close()
        hub._http = TestClient(app)
        return hub

    monkeypatch.setattr(cli_common, "client", client)


def invoke(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == code, result.output
    return result


def out(*args: str) -> str:
    return str(invoke(*args).stdout)


def test_release_and_rollout_commands(fleet_store: Store, publisher: DesiredPublisher) -> None:
    out("handlers", "add", "temp-c", "--image", f"{REG}/temp-c:1.0", "--version", "1.0")
    out("subscriptions", "add", "temp-lab", "--target", "site=lab", "--topic", "sensors/+/t", "--handler", "temp-c")
    assert out("release", "add", "temp-c", "1.1", "--image", f"{REG}/temp-c:1.1") == (
        f"release temp-c 1.1: {REG}/temp-c@{DIGESTS['1.1']}\n"
    )
    assert "give --image or --local-id" in invoke("release", "add", "temp-c", "1.2", code=2).output
    assert (
        "unknown repository or tag"
        in invoke("release", "add", "temp-c", "2", "--image", f"{REG}/temp-c:2", code=1).output
    )
    listed = json.loads(out("release", "list", "temp-c", "--json"))
    assert [(r["version"], r["stable"]) for r in listed] == [("1.0", True), ("1.1", False)]
    assert "1.1" in out("release", "list", "temp-c")

    started = out("rollout", "start", "temp-c", "--release", "1.1", "--target", "site=lab", "--canary", "1",
                  "--batch", "25%", "--soak", "10s", "--max-error-rate", "0.01", "--max-lag-ms", "500")  # fmt: skip
    assert started == "rollout 1 started: temp-c 1.0 -> 1.1, 2 devices in 2 steps (1, 1)\n"
    asyncio.run(RolloutController(fleet_store, publisher, clock=lambda: NOW).tick())
    status = out("rollout", "status", "1")
    assert "0/2 devices" in status
    assert "assigned" in status
    assert "error rate <= 1.0%, lag <= 500 ms" in status
    shown = json.loads(out("rollout", "status", "1", "--json"))
    assert (shown["state"], shown["step"], shown["soak"]) == ("running", 1, "10s")
    assert "1.0 -> 1.1" in out("rollout", "list")
    assert json.loads(out("rollout", "list", "--json"))[0]["id"] == 1

    assert out("rollout", "pause", "1") == "rollout 1: paused\n"
    assert out("rollout", "resume", "1") == "rollout 1: running\n"
    assert out("rollout", "abort", "1") == "rollout 1: aborted\n"
    assert out("rollout", "undo", "1") == "rollout 1: undone; desired state: dev-a v3\n"
    refused = invoke("rollout", "pause", "1", code=1)
    assert refused.output.strip() == "hub: the hub answered 409: rollout 1 is undone: it cannot be paused"
