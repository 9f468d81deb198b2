"""The hub's Ed25519 signing key: made by ``hub keys init``, loaded by ``hub serve`` to sign desired state.

The private key is PEM PKCS8 (mode 0600, never leaves the hub); the public key is PEM SubjectPublicKeyInfo,
for the agents' configs. Both files are written to a temporary name and renamed, so a crash never leaves half
a key behind, and ``--force`` replaces a pair atomically file by file.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_protocol.desired import key_id, load_private_key
from edge_protocol.files import write_atomically
from hub.errors import ConfigError, HubError

log = logging.getLogger(__name__)

PRIVATE_NAME = "hub-signing.key"
PUBLIC_NAME = "hub-signing.pub"


class KeysExist(HubError):
    """``hub keys init`` found a key pair (or half of one) and was not told to replace it."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Where ``init_keys`` wrote the pair, the public key's PEM text and its key id."""

    private_path: Path
    public_path: Path
    public_pem: str
    key_id: str


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def init_keys(directory: Path, *, force: bool = False) -> KeyPair:
    """Make a new key pair in ``directory`` (created if missing); KeysExist unless ``force``."""
    private_path, public_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    existing = [str(p) for p in (private_path, public_path) if p.exists()]
    if existing and not force:
        raise KeysExist(f"{' and '.join(existing)} already exist: pass --force to replace them")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = public_pem(key.public_key())
    write_atomically(private_path, private_pem, 0o600)
    write_atomically(public_path, pem.encode(), 0o644)
    return KeyPair(private_path, public_path, pem, key_id(key.public_key()))


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The hub's private key from ``path``; ConfigError (naming ``signing.private_key``) when it cannot be used."""
    try:
        pem = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError([f"signing.private_key: cannot read {path}: {exc.strerror or exc}"]) from exc
    try:
        key = load_private_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"signing.private_key: {path} is not an unencrypted Ed25519 PEM key: {exc}"]) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the signing key %s is readable by others (mode %o): chmod 600 it", path, stat.S_IMODE(mode))
    return key
