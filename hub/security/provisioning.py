"""``hub device provision`` and ``hub device revoke``: a device's credentials at the CA, the broker and the hub.

Provisioning issues a certificate (CN = device id, clientAuth) or, for brokers without client-certificate
auth, a random password; gives the device its role and client in the broker's dynamic-security plugin;
records the device (with its labels) and the credential in the hub's store; and writes the directory to copy
to the device: ``agent.toml``, ``ca.crt``, ``hub-signing.pub`` and ``device.crt``/``device.key``.
The order keeps failures harmless: nothing is written to disk before the broker and the store accepted it.

Revoking disables the plugin's client (its live connection is dropped at once) and deletes its role (a
certificate login asks the plugin nothing, so the role is what carries the rights), marks the credentials
revoked and rewrites the CRL, which the broker reads at start and on SIGHUP.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edge_protocol.files import write_atomically
from edge_protocol.specs import NAME_PATTERN
from edge_protocol.topics import Topics
from hub.config import HubConfig
from hub.db.store import Store
from hub.desired.keys import load_signing_key, public_pem
from hub.errors import ConfigError, Conflict, NotFound, Unprocessable
from hub.security import credentials
from hub.security.ca import CertificateAuthority
from hub.security.credentials import CERTIFICATE, PASSWORD, Credential
from hub.security.dynsec import DEFAULT_HUB_USERNAME, Dynsec, provision_commands, revoke_commands

AGENT_CONFIG = "agent.toml"
RESERVED = frozenset({"admin"})
"""Names a device may not take besides the hub's own broker username: a certificate with that CN would be it."""


@dataclass(frozen=True, slots=True)
class Provisioned:
    """What ``provision`` made: the credential, the device's labels and the files written."""

    credential: Credential
    labels: dict[str, str]
    files: list[Path]


@dataclass(frozen=True, slots=True)
class Revoked:
    """What ``revoke`` did: the credentials marked revoked and the CRL rewritten."""

    credentials: list[Credential]
    crl: Path


class Provisioner:
    """Provision and revoke devices with the hub's config, store, CA and a dynsec connection (None: a broker
    with static password and ACL files, which the operator edits)."""

    def __init__(
        self,
        config: HubConfig,
        store: Store,
        dynsec: Dynsec | None,
        ca: CertificateAuthority,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._dynsec = dynsec
        self._ca = ca
        self._clock = clock
        self._topics = Topics(config.broker.prefix)

    def check_id(self, device_id: str) -> None:
        """Unprocessable unless ``device_id`` can be a device (agent config pattern, not a reserved name)."""
        if not re.fullmatch(NAME_PATTERN, device_id):
            raise Unprocessable(f"device id {device_id!r}: lower-case letters, digits, '.', '_', '-' (1-64)")
        hub_name = self._config.broker.username or DEFAULT_HUB_USERNAME
        if device_id in RESERVED | {hub_name}:
            raise Unprocessable(f"device id {device_id!r} is reserved (a device with it would be the {device_id})")

    async def provision(
        self, device_id: str, labels: Mapping[str, str], out: Path, install_dir: Path, *, password: bool = False
    ) -> Provisioned:
        """Make ``device_id``'s credential and agent config in ``out`` (paths in it point into ``install_dir``)."""
        self.check_id(device_id)
        now = self._clock()
        existing = await asyncio.to_thread(credentials.active, self._store, device_id, now)
        if existing:
            kinds = ", ".join(c.kind + (f" {c.serial}" if c.serial else "") for c in existing)
            raise Conflict(f"device {device_id!r} already has credentials ({kinds}): revoke it first")
        key_path = self._config.signing.private_key
        if key_path is None:
            raise ConfigError(["signing.private_key: provisioning needs it (the agent's config names its public key)"])
        hub_public = public_pem(load_signing_key(key_path).public_key())
        if await asyncio.to_thread((out / AGENT_CONFIG).exists):
            raise Conflict(f"{out / AGENT_CONFIG} exists: choose another --out")

        secret = secrets.token_urlsafe(24) if password else None
        issued = None if password else self._ca.issue_device(device_id)
        if self._dynsec is not None:
            await self._dynsec.run_checked(provision_commands(self._topics, device_id, secret))
        credential = Credential(
            device_id,
            PASSWORD if password else CERTIFICATE,
            issued.serial if issued else None,
            issued.not_after if issued else None,
            now,
            None,
        )
        merged = await asyncio.to_thread(credentials.register, self._store, device_id, labels, credential)

        files: dict[str, tuple[bytes, int]] = {"hub-signing.pub": (hub_public.encode(), 0o644)}
        if issued is not None:
            files["device.crt"] = (issued.cert_pem, 0o644)
            files["device.key"] = (issued.key_pem, 0o600)
        text = self.agent_config(device_id, install_dir, secret)
        files[AGENT_CONFIG] = (text.encode(), 0o600 if secret else 0o644)
        written = await asyncio.to_thread(self._write, out, files)
        return Provisioned(credential, merged, written)

    def _write(self, out: Path, files: dict[str, tuple[bytes, int]]) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        contents = {"ca.crt": (self._ca.cert_path.read_bytes(), 0o644), **files}
        for name, (data, mode) in contents.items():
            write_atomically(out / name, data, mode)
        return [out / name for name in contents]

    def agent_config(self, device_id: str, install_dir: Path, password: str | None) -> str:
        """The agent's TOML for ``device_id``, its files under ``install_dir``."""
        prov = self._config.provisioning

        def q(value: object) -> str:
            return json.dumps(str(value))  # a JSON string is a valid TOML basic string

        lines = [
            f"# edge-agent configuration of device {device_id}, written by `hub device provision`.",
            f"# Copy this directory to {install_dir} on the device; device.key and this file stay private.",
            f"device_id = {q(device_id)}",
            f"data_dir = {q(prov.agent_data_dir)}",
            f"hub_public_key_file = {q(install_dir / 'hub-signing.pub')}   # managed: runs only what the hub signs",
            "",
            "[cloud]",
            f"host = {q(prov.broker_host)}",
            f"port = {prov.password_port if password else prov.broker_port}",
            f"prefix = {q(self._config.broker.prefix)}",
            f"tls_ca = {q(install_dir / 'ca.crt')}   # the broker's certificate is checked against the fleet CA",
        ]
        if password is None:
            lines += [f"tls_cert = {q(install_dir / 'device.crt')}", f"tls_key = {q(install_dir / 'device.key')}"]
        else:
            lines += [f"username = {q(device_id)}", f"password = {q(password)}"]
        return "\n".join(lines) + "\n"

    async def revoke(self, device_id: str) -> Revoked:
        """Cut the device off at the broker now, mark its credentials revoked, rewrite the CRL."""
        answers = await self._dynsec.run_checked(revoke_commands(device_id)) if self._dynsec is not None else []
        now = self._clock()
        revoked = await asyncio.to_thread(credentials.revoke, self._store, device_id, now)
        if not revoked and all(a.error is not None for a in answers):
            raise NotFound(f"device {device_id!r} has no credentials to revoke")
        return Revoked(revoked, await self.write_crl())

    async def write_crl(self) -> Path:
        """Rewrite the CA's CRL from the store: every revoked certificate not yet expired."""
        listed = await asyncio.to_thread(credentials.revoked_certificates, self._store, self._clock())
        return await asyncio.to_thread(self._ca.write_crl, listed)
