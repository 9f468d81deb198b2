"""The CLI's control-plane commands against the real API (FastAPI's TestClient): handlers, subscriptions,
devices and one device, as tables and as JSON; validation errors one per line."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from typer.testing import CliRunner

from hub.api.app import create_app
from hub.cli import app as cli
from hub.cli import common as cli_common
from hub.cli.client import HubClient
from hub.db.store import Store
from hub.desired.publisher import DesiredPublisher
from hub.fleet.registry import Fleet
from tests.unit.hub.conftest import NOW
from tests.unit.hub.factories import reported


@pytest.fixture(autouse=True)
def in_process_api(fleet_store: Store, publisher: DesiredPublisher, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(fleet_store, clock=lambda: NOW, desired=publisher)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's notice about its httpx-based TestClient
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


def add_temp_handler() -> None:
    out("handlers", "add", "temp-c", "--image", "edgefleet/temp-c:1", "--memory", "64m", "--cpus", "0.5")


def test_handlers_add_list_show_remove() -> None:
    added = json.loads(
        out("handlers", "add", "temp-c", "--image", "img:1", "--memory", "64m", "--cpus", "0.5", "--pids", "32",
            "--replicas", "2", "--network", "host", "--env", "LEVEL=debug", "--env", "X=a=b",
            "--event-timeout", "2s", "--batch-size", "50", "--batch-linger", "2ms",
            "--json")
    )  # fmt: skip
    spec = added["handler"]["spec"]
    assert spec["limits"] == {"memory": "64m", "cpus": 0.5, "pids": 32, "tmpfs_size": "16m"}
    assert (spec["replicas"], spec["network"], spec["env"]) == (2, "host", {"LEVEL": "debug", "X": "a=b"})
    assert (spec["event_timeout"], spec["batch_size"], spec["batch_linger"]) == ("2s", 50, "0.002s")

    taken = invoke("handlers", "add", "temp-c", "--image", "img:2", code=1)
    assert "already exists" in taken.output
    assert out("handlers", "add", "temp-c", "--image", "img:2", "--replace").startswith("handler temp-c replaced")
    table = out("handlers", "list")
    assert "temp-c" in table
    assert "img:2" in table
    assert json.loads(out("handlers", "list", "--json"))[0]["spec"]["replicas"] == 1  # replaced: defaults again
    shown = out("handlers", "show", "temp-c")
    assert "limits.memory" in shown
    assert "128m" in shown
    assert json.loads(out("handlers", "show", "temp-c", "--json"))["name"] == "temp-c"
    missing = invoke("handlers", "show", "nope", code=1)
    assert missing.output.strip() == "hub: the hub answered 404: no handler named 'nope'"
    assert out("handlers", "remove", "temp-c") == "handler temp-c removed; no device's state changed\n"


def test_subscriptions_add_list_show_remove() -> None:
    add_temp_handler()
    added = out(
        "subscriptions", "add", "temp-lab", "--target", "site=lab", "--topic", "sensors/+/t", "--handler", "temp-c",
        "--window", "10s", "--window-kind", "hopping", "--hop", "5s", "--stats", "count,mean,max,p99",
        "--fields", "c,f", "--group-by", "topic[1]", "--event-time-field", "ts", "--lateness", "2s",
        "--overflow", "drop-oldest", "--queue-size", "500", "--qos", "0",
    )  # fmt: skip
    assert added == "subscription temp-lab created; new desired state: dev-a v1, dev-b v1\n"
    sub = json.loads(out("subscriptions", "show", "temp-lab", "--json"))
    assert sub["target"] == ["site=lab"]
    assert sub["spec"] == {
        "name": "temp-lab",
        "topic": "sensors/+/t",
        "handler": "temp-c",
        "window": {"kind": "hopping", "size": "10s", "hop": "5s", "gap": None},
        "stats": ["count", "mean", "max", "p99"],
        "fields": ["c", "f"],
        "group_by": ["topic[1]"],
        "event_time_field": "ts",
        "lateness": "2s",
        "key": None,
        "overflow": "drop-oldest",
        "queue_size": 500,
        "qos": 0,
    }
    table = out("subscriptions", "list")
    assert "hopping 10s every 5s" in table
    assert "site=lab" in table
    assert "window.hop" in out("subscriptions", "show", "temp-lab")
    everywhere = json.loads(
        out("subscriptions", "add", "all", "--topic", "#", "--handler", "temp-c", "--json")
    )  # no --target: every device
    assert [(v["device"], v["version"]) for v in everywhere["desired"]] == [("dev-a", 2), ("dev-b", 2), ("dev-c", 1)]
    removed = json.loads(out("subscriptions", "remove", "temp-lab", "--json"))
    assert (removed["action"], [v["device"] for v in removed["desired"]]) == ("removed", ["dev-a", "dev-b"])
    assert [s["name"] for s in json.loads(out("subscriptions", "list", "--json"))] == ["all"]


def test_validation_errors_are_printed_one_per_line() -> None:
    add_temp_handler()
    result = invoke(
        "subscriptions", "add", "bad", "--topic", "a/#/b", "--handler", "temp-c", "--window-kind", "hopping",
        "--stats", "count,median", code=1,
    )  # fmt: skip
    lines = result.output.strip().splitlines()
    assert len(lines) == 3, result.output
    assert lines[0].startswith("hub: invalid spec.topic: '#' must be a whole last level")
    assert lines[1] == "hub: invalid spec.window: a hopping window needs 0 < hop <= size"
    assert lines[2].startswith("hub: invalid spec.stats: unknown statistic 'median'")
    orphan = invoke("subscriptions", "add", "x", "--topic", "t", "--handler", "ghost", code=1)
    assert orphan.output.strip().startswith("hub: invalid spec.handler: no handler named 'ghost'")
    assert "write key=value" in invoke("subscriptions", "add", "x", "--topic", "t", "--handler", "h",
                                        "--target", "site", code=2).output  # fmt: skip
    assert "write NAME=VALUE" in invoke("handlers", "add", "h", "--image", "i", "--env", "X", code=2).output
    assert "removed" in invoke("handlers", "remove", "temp-c").output  # unused: removable


def test_a_handler_in_use_is_not_removed() -> None:
    add_temp_handler()
    out("subscriptions", "add", "s", "--topic", "t", "--handler", "temp-c")
    refused = invoke("handlers", "remove", "temp-c", code=1)
    assert refused.output.strip() == (
        "hub: the hub answered 409: handler 'temp-c' is used by subscription(s) s: remove them first"
    )


def test_devices_and_device_show(fleet_store: Store) -> None:
    add_temp_handler()
    out("subscriptions", "add", "temp-lab", "--target", "site=lab", "--topic", "t/#", "--handler", "temp-c")
    Fleet(fleet_store).record_reported(
        reported("dev-a", applied=1, losses={"temp-lab": {"expired": 5}}, refusal="stale: version 1 < 2"),
        seen_at=NOW,
        received_at=NOW,
    )
    table = out("devices", "--label", "site=lab")
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert sorted(lines) == ["dev-a", "dev-b"]
    assert "1/1" in lines["dev-a"]
    assert "temp-c:ok" in lines["dev-a"]
    assert lines["dev-a"].rstrip().endswith("5")
    assert "-/1" in lines["dev-b"]
    listed = json.loads(out("devices", "--json"))
    assert [(d["id"], d["applied_version"], d["desired_version"]) for d in listed] == [
        ("dev-a", 1, 1),
        ("dev-b", None, 1),
        ("dev-c", None, None),
    ]

    detail = out("device", "show", "dev-a")
    for expected in ("site=lab", "1/1", "stale: version 1 < 2", "temp-c", "expired", "received"):
        assert expected in detail, expected
    shown = json.loads(out("device", "show", "dev-a", "--json"))
    assert shown["losses"] == {"temp-lab": {"expired": 5}}
    assert shown["subscriptions"]["temp"]["received"] == 10
    assert "never" in out("device", "show", "dev-c")  # no reported state yet
    assert "404" in invoke("device", "show", "ghost", code=1).output
