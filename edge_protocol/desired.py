"""Desired state: what the hub tells one device to run, signed so that only the hub can say it.

The envelope carries the document's exact bytes (as a JSON string field) and an Ed25519 signature over those
bytes, so no canonical JSON form is needed: the agent verifies the bytes it received, then parses them.
Checks, in order: the signature, the addressee, the expiry (``expires_at``, signed inside the document, with the
caller's clock tolerance), the version (only ever increases; the same version again is a no-op, or a renewal
when it carries a later expiry: for the caller to detect, as only it knows what it runs).

``expires_at`` is optional so that an older hub's documents, which have none, still verify: such a document
never expires, unless the caller requires an expiry (``require_expiry``: refused as ``no-expiry``). A hub that
signs expiry re-signs each device's current document, same version and content, well before it expires.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationError, model_validator

from edge_protocol import PROTOCOL_VERSION
from edge_protocol.base import WireModel
from edge_protocol.specs import HandlerSpec, SubscriptionSpec

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# cryptography is imported where keys are used, not here: an agent that is not hub-managed never verifies a
# document, and cryptography's bindings are 6 MiB of its RSS (docs/performance.md).


class DesiredDocument(WireModel):
    """Everything one device should run; ``version`` only increases (a rollback is a new, higher version)."""

    kind: Literal["desired-document"] = "desired-document"
    v: int = PROTOCOL_VERSION
    device: str
    version: int = Field(ge=1)
    issued_at: float = Field(description="when the hub signed this text (epoch seconds)")
    expires_at: float | None = Field(
        default=None, description="run it no later than this (epoch seconds); None from a hub that signs no expiry"
    )
    handlers: list[HandlerSpec] = Field(default_factory=list)
    subscriptions: list[SubscriptionSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> DesiredDocument:
        names = {h.name for h in self.handlers}
        if len(names) != len(self.handlers):
            raise ValueError("handler names must be unique")
        if len({s.name for s in self.subscriptions}) != len(self.subscriptions):
            raise ValueError("subscription names must be unique")
        for sub in self.subscriptions:
            if sub.handler not in names:
                raise ValueError(f"subscription {sub.name!r} names handler {sub.handler!r}, not in the document")
        return self

    def expired(self, now: float, tolerance: float = 0.0) -> bool:
        """True once ``now`` is past ``expires_at`` by more than ``tolerance`` seconds (never without an expiry)."""
        return self.expires_at is not None and now > self.expires_at + tolerance

    def content_hash(self) -> str:
        """Hash of what the device runs (handlers and subscriptions), independent of version and time."""
        body = self.model_dump_json(include={"device", "handlers", "subscriptions"})
        return hashlib.sha256(body.encode()).hexdigest()


class SignedDesired(WireModel):
    """hub -> agent, retained on ``{prefix}/devices/{id}/desired``."""

    kind: Literal["desired"] = "desired"
    v: int = PROTOCOL_VERSION
    document: str = Field(description="the DesiredDocument's exact JSON text")
    signature: str = Field(description="base64 Ed25519 signature over document.encode('utf-8')")
    key_id: str = Field(description="first 16 hex digits of the SHA-256 of the raw public key")


class DesiredRefused(ValueError):
    """A desired-state message the agent must not act on; ``reason`` is short and reportable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def is_pinned(image: str) -> bool:
    """True for an image named by content: a registry digest (``repo@sha256:<64 hex>``) or a local image id."""
    ref = image.rsplit("@", 1)[1] if "@" in image else image
    digest = ref.removeprefix("sha256:")
    return ref.startswith("sha256:") and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def key_id(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_document(document: DesiredDocument, private_key: Ed25519PrivateKey) -> SignedDesired:
    # Without an expiry the key is left out, so that an agent older than expires_at can still read the text.
    text = document.model_dump_json(exclude={"expires_at"} if document.expires_at is None else None)
    signature = private_key.sign(text.encode("utf-8"))
    return SignedDesired(
        document=text, signature=base64.b64encode(signature).decode("ascii"), key_id=key_id(private_key.public_key())
    )


def verify_document(
    payload: bytes,
    public_key: Ed25519PublicKey,
    device_id: str,
    *,
    now: float | None = None,
    tolerance: float = 0.0,
    require_expiry: bool = False,
) -> DesiredDocument:
    """The document in ``payload`` if it is signed by ``public_key``, addressed to ``device_id`` and not expired at
    ``now`` (default: the wall clock) give or take ``tolerance`` seconds."""
    document = verify_signed(payload, public_key, device_id)
    check_expiry(document, time.time() if now is None else now, tolerance, require_expiry=require_expiry)
    return document


def check_expiry(document: DesiredDocument, now: float, tolerance: float, *, require_expiry: bool = False) -> None:
    """Raise :class:`DesiredRefused` (``expired``, ``no-expiry``) unless ``document`` may be applied at ``now``."""
    if document.expires_at is None:
        if require_expiry:
            raise DesiredRefused("no-expiry", f"version {document.version} carries no expires_at")
        return
    if document.expired(now, tolerance):
        raise DesiredRefused(
            "expired",
            f"version {document.version} expired {now - document.expires_at:.0f}s ago (tolerance {tolerance:.0f}s)",
        )


def verify_signed(payload: bytes, public_key: Ed25519PublicKey, device_id: str) -> DesiredDocument:
    """The document in ``payload`` if it is signed by ``public_key`` and addressed to ``device_id``, expired or
    not: for a caller that decides about expiry itself (a document it runs, a same-version repeat)."""
    from cryptography.exceptions import InvalidSignature

    try:
        envelope = SignedDesired.model_validate_json(payload)
    except ValidationError as exc:
        raise DesiredRefused("malformed", _first_error(exc)) from None
    try:
        signature = base64.b64decode(envelope.signature, validate=True)
        public_key.verify(signature, envelope.document.encode("utf-8"))
    except (InvalidSignature, ValueError):
        raise DesiredRefused("bad-signature", f"not signed by the hub key {key_id(public_key)}") from None
    try:
        document = DesiredDocument.model_validate_json(envelope.document)
    except ValidationError as exc:
        raise DesiredRefused("malformed", _first_error(exc)) from None
    if document.device != device_id:
        raise DesiredRefused("wrong-device", f"addressed to {document.device!r}, not {device_id!r}")
    return document


def load_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM text or from base64 of its 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
    else:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the hub key must be an Ed25519 public key")
    return key


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the signing key must be an Ed25519 private key")
    return key


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
