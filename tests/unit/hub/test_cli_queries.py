"""The CLI's query commands against the real API (FastAPI's TestClient): labels, roll-ups, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub.api.app import create_app
from hub.cli import app as cli
from hub.cli.client import HubClient
from hub.db.store import Store
from hub.fleet.devices import Devices
from hub.ingest.aggregates import Aggregates
from tests.unit.hub.factories import record

T0 = 1_200.0


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as opened:
        for n, device in enumerate(("dev-a", "dev-b", "dev-c")):
            values = tuple(float(v + 10 * n) for v in range(1, 5))
            Aggregates(opened).store_batch(device, [record(1, device=device, start=T0, values=values, sketch=True)])
        app = create_app(opened, clock=lambda: T0 + 600)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # starlette's notice about its httpx-based TestClient
            from fastapi.testclient import TestClient

        def client(api: str, token: str | None) -> HubClient:
            hub = HubClient(api, token)
            hub._http.close()
            hub._http = TestClient(app)
            return hub

        monkeypatch.setattr(cli, "_client", client)
        yield opened


def run(*args: str) -> str:
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_label_devices_and_list_them(store: Store) -> None:
    assert run("device", "label", "dev-a", "site=lyon", "tier=edge").strip() == "site=lyon,tier=edge"
    assert run("device", "label", "dev-b", "site=lyon").strip() == "site=lyon"
    assert run("device", "label", "dev-a", "--remove", "tier").strip() == "site=lyon"
    listed = json.loads(run("devices", "--label", "site=lyon", "--json"))
    assert [(d["id"], d["labels"]) for d in listed] == [("dev-a", {"site": "lyon"}), ("dev-b", {"site": "lyon"})]
    assert "site=lyon" in run("devices")


def test_label_errors_exit_2_with_the_reason(store: Store) -> None:
    result = CliRunner().invoke(cli.app, ["device", "label", "dev-a", "site"])
    assert result.exit_code == 2
    assert "write key=value" in result.output
    unknown = CliRunner().invoke(cli.app, ["device", "label", "ghost", "a=b"])
    assert unknown.exit_code == 1
    assert "404" in unknown.output


def test_csv_output_parses(store: Store) -> None:
    Devices(store).update_labels("dev-c", {"site": "oslo"})
    text = run("aggregates", "--csv", "--stats", "count,mean,p99")
    header, *lines = list(csv.reader(io.StringIO(text)))
    assert header[-4:] == ["field", "count", "mean", "p99"]
    assert len(lines) == 3
    assert {line[header.index("device")] for line in lines} == {"dev-a", "dev-b", "dev-c"}
    assert all(float(line[header.index("mean")]) > 0 for line in lines)
    only = list(csv.reader(io.StringIO(run("aggregates", "--csv", "--label", "site=oslo"))))
    assert [line[2] for line in only[1:]] == ["dev-c"]


def test_rollup_table_and_json(store: Store) -> None:
    rows = json.loads(run("aggregates", "--rollup", "devices", "--every", "1m", "--stats", "count,p99", "--json"))
    (row,) = rows
    assert (row["devices"], row["events"], row["window_end"] - row["window_start"]) == (3, 12, 60.0)
    assert row["fields"]["temp"]["stats"]["count"] == 12
    table = run("aggregates", "--rollup", "devices", "--stats", "count,mean,p99")
    assert "devices" in table
    assert "p99" in table
    assert "12" in table


def test_a_refused_rollup_is_reported(store: Store) -> None:
    result = CliRunner().invoke(cli.app, ["aggregates", "--every", "15s"])
    assert result.exit_code == 1
    assert "not a multiple of the windows' size" in result.output
