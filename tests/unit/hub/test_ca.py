"""``hub ca``: the CA's key and certificate, broker and device certificates, the CRL."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from hub.cli.app import app
from hub.security.ca import CaError, CertificateAuthority


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_ten_year_p256_ca_with_a_private_key(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    assert mode(tmp_path / "ca" / "ca.key") == 0o600
    assert mode(ca.cert_path) == 0o644
    cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    assert cert.version is x509.Version.v3
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)
    cert.verify_directly_issued_by(cert)  # self-signed
    # Loading gives back the same CA; a second init refuses to replace it.
    assert CertificateAuthority.load(tmp_path / "ca").cert == ca.cert
    with pytest.raises(CaError, match="already exists"):
        CertificateAuthority.init(tmp_path / "ca")


def test_broker_and_device_certificates(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path)
    server = x509.load_pem_x509_certificate(ca.issue_server(["127.0.0.1", "broker.example.net"]).cert_pem)
    server.verify_directly_issued_by(ca.cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.net"]
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    issued = ca.issue_device("dev-1")
    device = x509.load_pem_x509_certificate(issued.cert_pem)
    device.verify_directly_issued_by(ca.cert)
    assert device.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    assert list(device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert not device.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.serial == format(device.serial_number, "x")
    assert issued.not_after == device.not_valid_after_utc.timestamp()
    assert issued.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_the_crl_lists_revoked_serials_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path)
    revoked = ca.issue_device("gone")
    kept = ca.issue_device("kept")
    crl = x509.load_pem_x509_crl(ca.write_crl([(revoked.serial, 1_700_000_000.0)]).read_bytes())
    assert crl.is_signature_valid(ca.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(int(revoked.serial, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(kept.serial, 16)) is None
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.UTC)


def test_ca_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    where = str(tmp_path / "ca")
    first = runner.invoke(app, ["ca", "init", "--dir", where])
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.crt", "ca.key", "crl.pem"]
    again = runner.invoke(app, ["ca", "init", "--dir", where])
    assert again.exit_code == 1
    assert "already exists" in again.stderr
    server = runner.invoke(app, ["ca", "server-cert", "--host", "127.0.0.1", "--dir", where])
    assert server.exit_code == 0, server.output
    assert mode(tmp_path / "ca" / "server.key") == 0o600
    missing = runner.invoke(app, ["ca", "server-cert", "--host", "x", "--dir", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1
    assert "hub ca init" in missing.stderr
