"""Provisioning and revoking on a fake broker: the agent config written, the store's records, the CRL."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from edge_agent.config import load_config
from hub.cli.app import app
from hub.config import HubConfig
from hub.db.store import Store
from hub.desired.keys import init_keys
from hub.errors import ConfigError, Conflict, NotFound, Unprocessable
from hub.fleet.devices import Devices
from hub.security import credentials
from hub.security.ca import CertificateAuthority
from hub.security.dynsec import Dynsec
from hub.security.provisioning import Provisioner
from tests.unit.hub.test_dynsec import AnsweringBus

NOW = 1_800_000_000.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Provisioner, Store, AnsweringBus, HubConfig]]:
    keys = init_keys(tmp_path / "keys")
    CertificateAuthority.init(tmp_path / "ca")
    config = HubConfig(
        broker={"prefix": "fleet", "username": "hub"},
        store={"url": f"sqlite:///{tmp_path / 'hub.db'}"},
        signing={"private_key": keys.private_path},
        provisioning={
            "ca_dir": tmp_path / "ca",
            "broker_host": "broker.example",
            "broker_port": 8883,
            "password_port": 8884,
            "agent_data_dir": "/var/lib/edgefleet",
        },
    )
    bus = AnsweringBus()
    with Store(config.store.url) as store:
        ca = CertificateAuthority.load(tmp_path / "ca")
        yield Provisioner(config, store, Dynsec(bus), ca, clock=lambda: NOW), store, bus, config


async def test_provision_with_a_certificate(
    world: tuple[Provisioner, Store, AnsweringBus, HubConfig], tmp_path: Path
) -> None:
    provisioner, store, bus, _config = world
    done = await provisioner.provision("dev-1", {"site": "lab"}, tmp_path / "out", Path("/etc/edgefleet"))
    text = (tmp_path / "out" / "agent.toml").read_text()
    assert tomllib.loads(text) == {
        "device_id": "dev-1",
        "data_dir": "/var/lib/edgefleet",
        "hub_public_key_file": "/etc/edgefleet/hub-signing.pub",
        "cloud": {
            "host": "broker.example",
            "port": 8883,
            "prefix": "fleet",
            "tls_ca": "/etc/edgefleet/ca.crt",
            "tls_cert": "/etc/edgefleet/device.crt",
            "tls_key": "/etc/edgefleet/device.key",
        },
    }
    assert done.labels == {"site": "lab"}
    assert done.credential.kind == "certificate"
    assert [d.labels for d in Devices(store).all()] == [{"site": "lab"}]
    assert [c.serial for c in credentials.active(store, "dev-1", NOW)] == [done.credential.serial]
    assert [c["command"] for c in json.loads(bus.published[0].payload)["commands"]][-1] == "createClient"
    with pytest.raises(Conflict, match="revoke it first"):
        await provisioner.provision("dev-1", {}, tmp_path / "again", Path("/etc/edgefleet"))

    revoked = await provisioner.revoke("dev-1")
    assert [c.serial for c in revoked.credentials] == [done.credential.serial]
    crl = x509.load_pem_x509_crl(revoked.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(str(done.credential.serial), 16)) is not None
    assert credentials.active(store, "dev-1", NOW) == []


async def test_provision_with_a_password(
    world: tuple[Provisioner, Store, AnsweringBus, HubConfig], tmp_path: Path
) -> None:
    provisioner, store, _bus, _config = world
    out = tmp_path / "pw"
    await provisioner.provision("dev-2", {}, out, out, password=True)
    config = load_config(out / "agent.toml")  # in place: the paths point into `out`
    assert (config.cloud.username, config.cloud.port, config.cloud.tls_cert) == ("dev-2", 8884, None)
    assert config.cloud.password
    assert len(config.cloud.password) >= 32
    assert config.managed
    assert [c.kind for c in credentials.credentials(store, "dev-2")] == ["password"]
    assert sorted(p.name for p in out.iterdir()) == ["agent.toml", "ca.crt", "hub-signing.pub"]


async def test_refusals(world: tuple[Provisioner, Store, AnsweringBus, HubConfig], tmp_path: Path) -> None:
    provisioner, store, bus, config = world
    for bad in ("hub", "admin", "Upper", "a/b", ""):
        with pytest.raises(Unprocessable):
            await provisioner.provision(bad, {}, tmp_path / "x", tmp_path)
    bus.errors = {
        "disableClient": "Client not found",
        "removeClientRole": "Client not found",
        "deleteRole": "Role not found",
    }
    with pytest.raises(NotFound):
        await provisioner.revoke("never-provisioned")
    unsigned = Provisioner(
        config.model_copy(update={"signing": config.signing.model_copy(update={"private_key": None})}),
        store,
        Dynsec(bus),
        CertificateAuthority.load(config.provisioning.ca_dir),
    )
    with pytest.raises(ConfigError):
        await unsigned.provision("dev-3", {}, tmp_path / "y", tmp_path)
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()


def test_provision_and_revoke_commands_without_a_broker(tmp_path: Path) -> None:
    """--no-broker: for static password/ACL files; nothing connects to a broker."""
    keys = init_keys(tmp_path / "keys")
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "hub.db"}"\n[signing]\nprivate_key = "{keys.private_path}"\n'
        f'[provisioning]\nca_dir = "{tmp_path / "ca"}"\n'
    )
    runner = CliRunner()
    assert runner.invoke(app, ["ca", "init", "--config", str(config)]).exit_code == 0
    out = tmp_path / "dev-9"
    args = ["--config", str(config), "--no-broker"]
    made = runner.invoke(app, ["device", "provision", "dev-9", "--labels", "a=1,b=2", "--out", str(out), *args])
    assert made.exit_code == 0, made.output
    assert "provisioned dev-9: certificate" in made.stdout
    assert "labels a=1,b=2" in made.stdout
    assert (out / "device.crt").exists()
    revoked = runner.invoke(app, ["device", "revoke", "dev-9", *args])
    assert revoked.exit_code == 0, revoked.output
    assert "the broker was not told" in revoked.stdout
    again = runner.invoke(app, ["device", "revoke", "nobody", *args])
    assert again.exit_code == 1
    assert "no credentials to revoke" in again.stderr
    bad = runner.invoke(app, ["device", "provision", "hub", "--out", str(tmp_path / "h"), *args])
    assert bad.exit_code == 1
    assert "reserved" in bad.stderr
