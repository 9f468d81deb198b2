"""The intake's check of the device broker's mosquitto.conf ([local_broker] broker_config)."""

from __future__ import annotations

from pathlib import Path

from edge_agent.broker.local import check_broker_config
from edge_agent.config import LocalBrokerConfig

DEVICE_CONF = Path(__file__).resolve().parents[3] / "configs" / "mosquitto" / "device.conf"


def test_the_shipped_device_config_passes_for_both_protocols() -> None:
    assert check_broker_config(DEVICE_CONF) == []
    assert check_broker_config(DEVICE_CONF, v5=True) == []


def test_the_default_intake_is_mqtt_311() -> None:
    assert LocalBrokerConfig().protocol == "3.1.1"


def test_mosquitto_defaults_are_reported(tmp_path: Path) -> None:
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("listener 1883 127.0.0.1\n")
    problems = check_broker_config(conf)
    assert any("persistence is off" in p for p in problems)
    assert any("max_queued_messages is not set" in p for p in problems)
    assert any("max_inflight_messages is not set" in p for p in problems)
    # Over MQTT 5 the agent asks for its in-flight limit itself.
    assert not any("max_inflight_messages" in p for p in check_broker_config(conf, v5=True))


def test_include_dir_and_the_last_value_win(tmp_path: Path) -> None:
    included = tmp_path / "conf.d"
    included.mkdir()
    (included / "edgefleet.conf").write_text(
        "persistence true\nmax_queued_messages 0\nmax_inflight_messages 20\npersistent_client_expiration 10m\n"
    )
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"max_inflight_messages 65535\ninclude_dir {included}\n")
    problems = check_broker_config(conf)
    assert any("unbounded" in p for p in problems)
    assert any("max_inflight_messages is 20" in p for p in problems)
    assert not any("persistent_client_expiration" in p for p in problems)  # 10 months ("m" is a month)
    (included / "edgefleet.conf").write_text(
        "persistence true\nmax_queued_messages 1000\npersistent_client_expiration 2h\nmax_inflight_messages 0\n"
    )
    assert check_broker_config(conf) == []
    (included / "edgefleet.conf").write_text(
        "persistence true\nmax_queued_messages 1000\npersistent_client_expiration 1h\nmax_inflight_messages 0\n"
    )
    assert check_broker_config(conf) == []


def test_an_unreadable_file_is_reported(tmp_path: Path) -> None:
    assert "not readable" in check_broker_config(tmp_path / "missing.conf")[0]
