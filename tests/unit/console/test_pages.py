"""Each console page renders what the hub's services hold, and each action answers with a clear message."""

from __future__ import annotations

import csv
import io
import re

import pytest
from fastapi.testclient import TestClient

from hub.api.app import create_app
from hub.db.store import Store
from hub.rollouts.plan import Limits, State
from hub.rollouts.store import RolloutStore
from tests.unit.console.conftest import NEW, NOW, TOKEN, csrf_of, login


def rows(html: str, attribute: str) -> list[str]:
    return re.findall(rf'data-{attribute}="([^"]+)"', html)


def test_fleet_lists_devices_with_states_in_words(client: TestClient) -> None:
    page = client.get("/console/fleet")
    assert page.status_code == 200
    assert rows(page.text, "device") == ["dev-a", "dev-b", "dev-c"]
    assert "2 online" in page.text
    assert "1 offline" in page.text
    assert ">offline<" in page.text
    assert ">online<" in page.text
    assert "7 lost" in page.text  # dev-c's loss ledger
    assert "signature does not verify" in page.text  # dev-c's last refusal
    assert "outbox-write-failed" in page.text  # dev-c's alarm
    assert 'href="/console/static/console.css"' in page.text


def test_fleet_filters_by_labels(client: TestClient) -> None:
    page = client.get("/console/fleet", params={"labels": "site=plant"})
    assert rows(page.text, "device") == ["dev-c"]
    assert "matching <code>site=plant</code>" in page.text
    fragment = client.get("/console/fleet", params={"labels": "site=lab", "partial": "1"})
    assert rows(fragment.text, "device") == ["dev-a", "dev-b"]
    assert "<html" not in fragment.text
    bad = client.get("/console/fleet", params={"labels": "site"})
    assert bad.status_code == 422
    assert "Refused: label filter: bad label term" in bad.text


def test_device_page_shows_handlers_subscriptions_losses_and_a_chart(client: TestClient) -> None:
    page = client.get("/console/devices/dev-a")
    assert page.status_code == 200
    assert "temp-c" in page.text
    assert "restarts" in page.text.lower()
    assert 'id="subscriptions"' in page.text
    assert "late: 1" in page.text
    svg = page.text[page.text.index("<svg") : page.text.index("</svg>")]
    assert svg.count('class="dot') >= 20  # one per window of the last 20 minutes
    assert "<script" not in svg  # pygal's inline script is removed: the CSP allows none
    assert "20 points in the last hour" in page.text
    lost = client.get("/console/devices/dev-c")
    assert "outbox-full" in lost.text
    assert ">7<" in lost.text
    assert "No window from this device" in lost.text
    unknown = client.get("/console/devices/nope")
    assert unknown.status_code == 404
    assert "unknown device" in unknown.text


def test_catalog_shows_handlers_releases_by_digest_and_targets(client: TestClient) -> None:
    page = client.get("/console/catalog")
    assert page.status_code == 200
    assert NEW in page.text  # the release's full digest
    assert ">stable<" in page.text
    assert "<code>site=lab</code>" in page.text
    assert "2: dev-a, dev-b" in page.text  # the devices the subscription targets


def test_start_pause_resume_and_refusals(store: Store, client: TestClient) -> None:
    csrf = csrf_of(client)
    started = client.post("/console/rollouts", data={"csrf": csrf, "handler": "temp-c", "release": "1.1",
                                                     "target": "site=lab", "canary": "1", "batch": "50%",
                                                     "soak": "10s"})  # fmt: skip
    assert started.status_code == 201, started.text
    assert "Done: rollout 1 of temp-c to 1.1 started" in started.text
    assert 'data-step="1"' in started.text
    assert 'data-step="2"' in started.text
    again = client.post("/console/rollouts", data={"csrf": csrf, "handler": "temp-c", "release": "1.1"})
    assert again.status_code == 409
    assert "Refused: the rollout was not started: rollout 1 of &#39;temp-c&#39; is still in progress" in again.text
    paused = client.post("/console/rollouts/1/pause", data={"csrf": csrf})
    assert paused.status_code == 200
    assert "Done: rollout 1 paused" in paused.text
    assert 'id="rollout-state">paused<' in paused.text
    refused = client.post("/console/rollouts/1/pause", data={"csrf": csrf})
    assert refused.status_code == 409
    assert "Refused: not paused: rollout 1 is paused: it cannot be paused" in refused.text
    resumed = client.post("/console/rollouts/1/resume", data={"csrf": csrf})
    assert resumed.status_code == 200
    assert "rollout 1 resumed" in resumed.text
    assert RolloutStore(store).get(1).state is State.RUNNING
    listing = client.get("/console/rollouts")
    assert rows(listing.text, "rollout") == ["1"]
    assert "0 of 2 passed" in listing.text
    assert client.get("/console/rollouts/1", params={"partial": "1"}).status_code == 200
    assert client.get("/console/rollouts/9").status_code == 404


def test_a_bad_rollout_form_says_what_is_wrong(client: TestClient) -> None:
    csrf = csrf_of(client)
    response = client.post("/console/rollouts", data={"csrf": csrf, "handler": "temp-c", "release": "1.1",
                                                      "batch": "lots"})  # fmt: skip
    assert response.status_code == 422
    assert "Refused: the rollout was not started: batch" in response.text
    assert 'value="lots"' in response.text  # the form keeps what was typed
    unknown = client.post("/console/rollouts", data={"csrf": csrf, "handler": "temp-c", "release": "9.9"})
    assert unknown.status_code == 422
    assert "has no release" in unknown.text


def test_the_rollout_form_sets_min_events_as_the_api_does(store: Store, client: TestClient) -> None:
    page = client.get("/console/rollouts")
    assert f'name="min_events" inputmode="numeric" value="{Limits().min_events}"' in page.text  # the API's default
    started = client.post("/console/rollouts", data={"csrf": csrf_of(client), "handler": "temp-c", "release": "1.1",
                                                     "min_events": "25"})  # fmt: skip
    assert started.status_code == 201, started.text
    assert RolloutStore(store).get(1).limits.min_events == 25
    assert "at least 25 events" in started.text  # the rollout's page shows its gate


def test_an_empty_min_events_is_the_default(store: Store, client: TestClient) -> None:
    started = client.post("/console/rollouts", data={"csrf": csrf_of(client), "handler": "temp-c", "release": "1.1",
                                                     "min_events": " "})  # fmt: skip
    assert started.status_code == 201, started.text
    assert RolloutStore(store).get(1).limits.min_events == Limits().min_events


@pytest.mark.parametrize("value", ["-1", "lots", "2.5"])
def test_a_bad_min_events_gets_the_form_back_with_the_reason(store: Store, client: TestClient, value: str) -> None:
    response = client.post("/console/rollouts", data={"csrf": csrf_of(client), "handler": "temp-c",
                                                      "release": "1.1", "min_events": value})  # fmt: skip
    assert response.status_code == 422
    assert "Refused: the rollout was not started: min_events: " in response.text
    assert f'name="min_events" inputmode="numeric" value="{value}"' in response.text  # kept as typed
    assert RolloutStore(store).all() == []


def test_without_a_signing_key_actions_are_refused_with_the_reason(store: Store) -> None:
    with TestClient(create_app(store, TOKEN, clock=lambda: NOW)) as client:
        login(client, TOKEN)
        page = client.get("/console/rollouts")
        assert "no signing key" in page.text
        response = client.post("/console/rollouts", data={"csrf": csrf_of(client), "handler": "temp-c",
                                                          "release": "1.1"})  # fmt: skip
        assert response.status_code == 409
        assert "the hub has no signing key" in response.text


def test_aggregates_explorer_per_device_rolled_up_and_quantiles(client: TestClient) -> None:
    page = client.get("/console/aggregates", params={"subscription": "temp", "stat": "mean"})
    assert page.status_code == 200
    assert "40 rows" in page.text  # 20 windows from each of two devices
    assert page.text.count('class="dot') >= 40
    merged = client.get("/console/aggregates", params={"subscription": "temp", "labels": "site=lab",
                                                       "rollup": "devices", "every": "5m", "stat": "p99"})  # fmt: skip
    assert merged.status_code == 200, merged.text
    assert "4 rows (merged across devices) in buckets of 5m" in merged.text  # 20 minutes in 5-minute buckets
    quantiles = re.findall(r'data-label="temp p99">([^<]+)<', merged.text)
    assert len(quantiles) == 4
    assert "n/a" not in quantiles
    assert merged.text.count('class="dot') >= 4
    refused = client.get("/console/aggregates", params={"subscription": "temp", "every": "90s"})
    assert refused.status_code == 422
    assert "Refused: every=90s is not a multiple" in refused.text


def test_aggregates_csv(client: TestClient) -> None:
    response = client.get("/console/aggregates.csv", params={"subscription": "temp", "device": "dev-a",
                                                             "stat": "max"})  # fmt: skip
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert len(table) == 20
    assert {row["device"] for row in table} == {"dev-a"}
    assert [float(row["value"]) for row in table][:2] == [30.0, 30.0]
    assert table[0]["window_start"] < table[-1]["window_start"]


def test_the_root_leads_to_the_console(client: TestClient) -> None:
    response = client.get("/", follow_redirects=True)
    assert response.url.path == "/console/fleet"
