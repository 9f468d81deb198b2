"""Device identity and per-device authorization on a real mosquitto: the TLS listener trusts only the hub's
CA, the dynamic-security plugin (managed by the hub over MQTT) lets a device speak only for itself, and a
revoked device is cut off at once and cannot come back.

PUBACK / SUBACK reason codes (MQTT 5): 0 success, 1 granted QoS 1, 16 no matching subscribers (accepted),
135 not authorized; DISCONNECT 152 administrative action.
"""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from edge_agent.config import load_config
from edge_agent.runtime.base import HandlerRuntime
from edge_protocol.messages import Ack
from edge_protocol.specs import HandlerSpec
from edge_protocol.topics import Topics
from hub.config import HubConfig
from hub.db.store import Store
from hub.fleet.devices import Devices
from hub.security import credentials
from hub.security.ca import CertificateAuthority
from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.support.running import running_agent, serving_hub, wait_for
from tests.support.secure_broker import HUB_USERNAME, MqttProbe, SecureCloud, tls_context
from tests.unit.hub.factories import batch, record

pytestmark = pytest.mark.integration

ACCEPTED = (0, 16)
NOT_AUTHORIZED = 135
ADMINISTRATIVE_ACTION = 152


def new_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def hub_probe(cloud: SecureCloud) -> MqttProbe:
    probe = MqttProbe(f"hub-probe-{uuid.uuid4().hex[:6]}")
    return probe.connect(cloud.hub_port, username=HUB_USERNAME, password=cloud.hub_password)


def device_probe(cloud: SecureCloud, device_dir: Path, name: str = "") -> MqttProbe:
    probe = MqttProbe(f"probe-{name or uuid.uuid4().hex[:6]}", tls=cloud.device_tls(device_dir))
    return probe.connect(cloud.tls_port)


def test_provision_writes_a_config_the_agent_accepts(secure_cloud: SecureCloud) -> None:
    device = new_id("cfg")
    out = secure_cloud.provision(device, "--labels", "site=lab,tier=edge")
    assert sorted(p.name for p in out.iterdir()) == [
        "agent.toml",
        "ca.crt",
        "device.crt",
        "device.key",
        "hub-signing.pub",
    ]
    assert (out / "device.key").stat().st_mode & 0o777 == 0o600
    config = load_config(out / "agent.toml")
    assert config.device_id == device
    assert config.managed
    assert (config.cloud.port, config.cloud.prefix) == (secure_cloud.tls_port, secure_cloud.prefix)
    assert (config.cloud.tls_ca, config.cloud.tls_cert, config.cloud.tls_key) == (
        out / "ca.crt",
        out / "device.crt",
        out / "device.key",
    )
    assert config.cloud.username is None
    assert config.cloud.password is None
    cert = x509.load_pem_x509_certificate((out / "device.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == device
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    with Store(secure_cloud.config.store.url) as store:
        issued = credentials.credentials(store, device)
        labels = {d.id: d.labels for d in Devices(store).all()}[device]
    assert [(c.kind, c.serial, c.revoked_at) for c in issued] == [
        ("certificate", format(cert.serial_number, "x"), None)
    ]
    assert labels == {"site": "lab", "tier": "edge"}
    # Provisioning again while the certificate is valid is refused: revoke first.
    again = secure_cloud.hub(
        "device",
        "provision",
        device,
        "--out",
        str(out.parent / "again"),
        "--config",
        str(secure_cloud.config_path),
        check=False,
    )
    assert again.exit_code == 1
    assert "already has credentials" in again.output


def test_a_device_speaks_and_listens_only_for_itself(secure_cloud: SecureCloud) -> None:
    a, b = new_id("a"), new_id("b")
    dir_a = secure_cloud.provision(a)
    secure_cloud.provision(b)
    topics = Topics(secure_cloud.prefix)
    with hub_probe(secure_cloud) as hub:
        assert hub.connected
        for device in (a, b):
            assert hub.publish(topics.desired(device), f'"{device}"'.encode(), retain=True) in ACCEPTED
    with device_probe(secure_cloud, dir_a) as dev:
        assert dev.connected
        for topic in (topics.status(a), topics.reported(a), topics.aggregates(a)):
            assert dev.publish(topic) in ACCEPTED, topic
        for topic in (
            topics.status(b),
            topics.reported(b),
            topics.aggregates(b),
            topics.desired(b),
            topics.acks(b),
            topics.desired(a),
            topics.acks(a),
            f"{secure_cloud.prefix}/other",
        ):
            assert dev.publish(topic) == NOT_AUTHORIZED, topic
        # mosquitto refuses the subscription itself (SUBACK 135), wildcards included.
        for topic_filter in (topics.desired(b), topics.acks(b), topics.all_devices("desired"), "#"):
            assert dev.subscribe(topic_filter) == [NOT_AUTHORIZED], topic_filter
        assert dev.subscribe(topics.desired(a)) == [1]
        assert dev.subscribe(topics.acks(a)) == [1]
        assert dev.wait(lambda: len(dev.messages) >= 1)
        assert dev.wait(lambda: len(dev.messages) > 1, timeout=0.5) is False
        assert [(m.topic, m.payload) for m in dev.messages] == [(topics.desired(a), f'"{a}"'.encode())]


def test_anonymous_and_foreign_clients_are_refused(secure_cloud: SecureCloud, tmp_path: Path) -> None:
    device = new_id("victim")
    secure_cloud.provision(device)
    ca_cert = secure_cloud.ca_dir / "ca.crt"
    with MqttProbe("no-cert", tls=tls_context(ca_cert)).connect(secure_cloud.tls_port) as no_cert:
        assert not no_cert.connected
    with MqttProbe("anonymous").connect(secure_cloud.hub_port) as anonymous:
        assert anonymous.connack is not None
        assert anonymous.connack.value == NOT_AUTHORIZED
    with MqttProbe("wrong-password").connect(secure_cloud.hub_port, username=HUB_USERNAME, password="guess") as wrong:
        assert not wrong.connected
    # A certificate device's plugin client has no password: nobody logs in as it on a password listener.
    for password in ("", None):
        with MqttProbe("impostor").connect(secure_cloud.hub_port, username=device, password=password) as impostor:
            assert impostor.connack is not None
            assert impostor.connack.value == NOT_AUTHORIZED
    # A certificate naming the same device, from a CA the broker does not trust.
    rogue = CertificateAuthority.init(tmp_path / "rogue-ca").issue_device(device)
    (tmp_path / "rogue.crt").write_bytes(rogue.cert_pem)
    (tmp_path / "rogue.key").write_bytes(rogue.key_pem)
    rogue_tls = tls_context(ca_cert, tmp_path / "rogue.crt", tmp_path / "rogue.key")
    with MqttProbe("rogue", tls=rogue_tls).connect(secure_cloud.tls_port) as foreign:
        assert not foreign.connected
        assert foreign.connack is None


def test_a_revoked_device_is_dropped_and_cannot_come_back(secure_cloud: SecureCloud) -> None:
    device, bystander = new_id("revoked"), new_id("bystander")
    out = secure_cloud.provision(device)
    other = secure_cloud.provision(bystander)
    topics = Topics(secure_cloud.prefix)
    serial = format(x509.load_pem_x509_certificate((out / "device.crt").read_bytes()).serial_number, "x")
    with device_probe(secure_cloud, out, "live") as live:
        assert live.connected
        assert live.publish(topics.status(device)) in ACCEPTED
        result = secure_cloud.revoke(device)
        assert serial in result.output
        # disableClient drops the live connection at once.
        assert live.wait(lambda: bool(live.disconnects), timeout=3)
        assert live.disconnects[0].value == ADMINISTRATIVE_ACTION
    # Until the broker reloads the CRL the certificate still opens a session, but with no rights at all.
    with device_probe(secure_cloud, out, "before-reload") as early:
        assert early.publish(topics.status(device)) == NOT_AUTHORIZED
        assert early.subscribe(topics.desired(device)) == [NOT_AUTHORIZED]
    crl = x509.load_pem_x509_crl((secure_cloud.ca_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    secure_cloud.reload()
    assert secure_cloud.broker is not None
    refusals = secure_cloud.broker.log_text().count("certificate verify failed")
    with device_probe(secure_cloud, out, "after-reload") as late:
        assert not late.connected
        assert late.connack is None
    assert secure_cloud.broker.log_text().count("certificate verify failed") == refusals + 1
    with device_probe(secure_cloud, other) as unaffected:
        assert unaffected.connected
        assert unaffected.publish(topics.status(bystander)) in ACCEPTED
    with Store(secure_cloud.config.store.url) as store:
        assert [c.revoked_at is not None for c in credentials.credentials(store, device)] == [True]
    # Once revoked, the device can be provisioned again: a new certificate, its rights back.
    renewed = secure_cloud.provision(device, out=out.with_name(f"{device}-renewed"))
    with device_probe(secure_cloud, renewed, "renewed") as back:
        assert back.connected
        assert back.publish(topics.status(device)) in ACCEPTED


def test_password_devices_for_brokers_without_client_certificates(secure_cloud: SecureCloud) -> None:
    device = new_id("pw")
    out = secure_cloud.provision(device, "--password", "--labels", "auth=password")
    cloud = tomllib.loads((out / "agent.toml").read_text())["cloud"]
    assert cloud["username"] == device
    assert len(cloud["password"]) >= 32
    assert "tls_cert" not in cloud
    assert cloud["tls_ca"] == str(out / "ca.crt")
    assert not (out / "device.key").exists()
    assert (out / "agent.toml").stat().st_mode & 0o777 == 0o600
    topics = Topics(secure_cloud.prefix)
    # The test broker offers passwords on its loopback listener; production uses a TLS listener for them.
    login = {"username": device, "password": cloud["password"]}
    with MqttProbe(f"pw-{device}").connect(secure_cloud.hub_port, **login) as dev:
        assert dev.connected
        assert dev.publish(topics.status(device)) in ACCEPTED
        assert dev.publish(topics.status("someone-else")) == NOT_AUTHORIZED
        assert dev.subscribe(topics.desired("someone-else")) == [NOT_AUTHORIZED]
        secure_cloud.revoke(device)
        assert dev.wait(lambda: bool(dev.disconnects), timeout=3)
        assert dev.disconnects[0].value == ADMINISTRATIVE_ACTION
    with MqttProbe(f"pw-{device}-again").connect(secure_cloud.hub_port, **login) as again:
        assert again.connack is not None
        assert again.connack.value == NOT_AUTHORIZED


async def test_hub_and_a_provisioned_agent_work_through_the_secured_broker(
    secure_cloud: SecureCloud, device_broker: Mosquitto, tmp_path: Path
) -> None:
    """The hub logs in with its password and the agent with its certificate; the hub role's rights carry
    status, reported, desired state, aggregates (shared subscription) and acks; the API wants a stored token."""
    device, uplink = new_id("agent"), new_id("uplink")
    out = await asyncio.to_thread(secure_cloud.provision, device, "--labels", "site=e2e")
    uplink_dir = await asyncio.to_thread(secure_cloud.provision, uplink)
    created = secure_cloud.hub("token", "create", f"ci-{device}", "--config", str(secure_cloud.config_path))
    token = created.stdout.strip()
    base = secure_cloud.config
    config = HubConfig(**{**base.model_dump(), "api": {"host": "127.0.0.1", "port": free_port()}})
    agent = load_config(out / "agent.toml", data_dir=tmp_path / "agent", local_broker={"port": device_broker.port})
    topics = Topics(secure_cloud.prefix)
    async with serving_hub(config) as (api, _hub), httpx.AsyncClient(base_url=api) as http:
        assert (await http.get("/v1/devices")).status_code == 401
        assert (await http.get("/v1/devices", headers={"Authorization": "Bearer eft_wrong"})).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/v1/devices", headers=auth)).status_code == 200

        async def online() -> bool:
            answer = await http.get(f"/v1/devices/{device}", headers=auth)
            return answer.status_code == 200 and answer.json()["online"] is True

        async with running_agent(agent, runtime_factory=_no_handlers) as (state, _task):
            await wait_for(online, timeout=20, what="the hub sees the agent online")
            await wait_for(
                lambda: state.reconciler is not None and state.reconciler.applied_version == 1,
                timeout=20,
                what="the agent applies its signed desired state",
            )
        shown = (await http.get(f"/v1/devices/{device}", headers=auth)).json()
        assert shown["labels"] == {"site": "e2e"}

        with device_probe(secure_cloud, uplink_dir, "uplink") as dev:
            assert dev.subscribe(topics.acks(uplink)) == [1]
            aggregates = batch(uplink, record(7, device=uplink)).model_dump_json().encode()
            assert dev.publish(topics.aggregates(uplink), aggregates) == 0  # the hub's shared subscription
            # The probe waits in a thread: the hub runs on this event loop.
            assert await asyncio.to_thread(dev.wait, lambda: bool(dev.messages), 10), "no ack from the hub"
            assert Ack.model_validate_json(dev.messages[0].payload).ranges == [(7, 7)]


def _no_handlers(spec: HandlerSpec) -> HandlerRuntime:
    raise AssertionError(f"no handler expected, got {spec.name}")
