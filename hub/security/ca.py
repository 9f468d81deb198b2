"""The fleet's certificate authority (``hub ca ...``): EC P-256 keys, X.509 v3 certificates, a CRL.

Files in the CA directory: ``ca.key`` (0600, never leaves the hub host), ``ca.crt`` (for the broker's
``cafile`` and the agents' ``tls_ca``), ``server.key``/``server.crt`` (the cloud broker's), ``crl.pem`` (the
broker's ``crlfile``). A device certificate has the device id as its common name (the broker's
``use_identity_as_username`` makes it the MQTT username) and the clientAuth extended key usage only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_protocol.files import write_atomically
from hub.errors import HubError

CA_KEY, CA_CERT, SERVER_KEY, SERVER_CERT, CRL = "ca.key", "ca.crt", "server.key", "server.crt", "crl.pem"
CA_DAYS = 3650
SERVER_DAYS = 825
DEVICE_DAYS = 825
CRL_DAYS = 365
"""The CRL's nextUpdate. Once it has passed, OpenSSL (so mosquitto) refuses *every* certificate (verified with
2.0.11): rewrite it (`hub ca crl`) and reload the broker well before."""
_BACKDATE = dt.timedelta(minutes=5)  # tolerate a device clock slightly behind the hub's


class CaError(HubError):
    """The CA directory is missing, incomplete or already initialised."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate just issued: its serial (hex), subject common name and expiry (epoch seconds)."""

    serial: str
    common_name: str
    not_after: float
    cert_pem: bytes
    key_pem: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, none)


def _name(common_name: str) -> x509.Name:
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet")
    return x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def serial_hex(serial: int) -> str:
    return format(serial, "x")


class CertificateAuthority:
    """A loaded CA: ``CertificateAuthority.load(dir)``; ``init(dir)`` makes one."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.directory = directory
        self.key = key
        self.cert = cert

    @classmethod
    def init(cls, directory: Path, *, name: str = "edgefleet fleet CA", force: bool = False) -> CertificateAuthority:
        """A new self-signed CA in ``directory``; CaError when one is there and ``force`` is not given."""
        key_path, cert_path = directory / CA_KEY, directory / CA_CERT
        if not force and (key_path.exists() or cert_path.exists()):
            raise CaError(
                f"a CA already exists in {directory}: pass --force to replace it (every device then "
                "needs a new certificate)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # keyCertSign, cRLSign
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_atomically(key_path, _key_pem(key), 0o600)
        write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(directory, key, cert)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        try:
            key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        except FileNotFoundError as exc:
            raise CaError(f"no CA in {directory} ({exc.filename} is missing): run `hub ca init` first") from exc
        except (OSError, ValueError) as exc:
            raise CaError(f"cannot load the CA in {directory}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{directory / CA_KEY} is not an EC key")
        return cls(directory, key, cert)

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    def _issue(self, common_name: str, days: int, extensions: Sequence[tuple[x509.ExtensionType, bool]]) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, True, False, False, False, False), critical=True
            )  # digitalSignature, keyAgreement (ECDHE)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(
            serial_hex(cert.serial_number),
            common_name,
            cert.not_valid_after_utc.timestamp(),
            cert.public_bytes(serialization.Encoding.PEM),
            _key_pem(key),
        )

    def issue_server(self, hosts: Iterable[str], days: int = SERVER_DAYS) -> Issued:
        """A broker certificate whose subjectAltName lists ``hosts`` (IP addresses and DNS names)."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        if not names:
            raise CaError("a server certificate needs at least one --host")
        san = x509.SubjectAlternativeName(names)
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        return self._issue(str(next(iter(hosts))), days, [(san, False), (eku, False)])

    def issue_device(self, device_id: str, days: int = DEVICE_DAYS) -> Issued:
        """A client certificate with CN = ``device_id`` and the clientAuth usage only."""
        return self._issue(device_id, days, [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])

    def write_server(self, issued: Issued) -> tuple[Path, Path]:
        cert_path, key_path = self.directory / SERVER_CERT, self.directory / SERVER_KEY
        write_atomically(key_path, issued.key_pem, 0o600)
        write_atomically(cert_path, issued.cert_pem, 0o644)
        return cert_path, key_path

    def write_crl(self, revoked: Iterable[tuple[str, float]], days: int = CRL_DAYS) -> Path:
        """Write ``crl.pem`` listing ``revoked`` (serial hex, revoked at epoch seconds); its path."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + dt.timedelta(days=days))
        )
        for serial, at in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(dt.datetime.fromtimestamp(at, dt.UTC))
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(self.key, hashes.SHA256())
        path = self.directory / CRL
        write_atomically(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return path
