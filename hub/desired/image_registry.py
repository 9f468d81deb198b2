"""Image references, and resolving a registry tag to its digest over the Distribution (Docker Registry v2) API.

``127.0.0.1:5000/temp-c:1.1`` -> ``HEAD http://127.0.0.1:5000/v2/temp-c/manifests/1.1`` with an Accept header
naming every manifest type the agent's engine can pull; the ``Docker-Content-Digest`` header is the digest
(GET when HEAD is refused or has no header; without the header either, the SHA-256 of the manifest body is
the digest by definition). The result names the image by digest: ``127.0.0.1:5000/temp-c@sha256:...``.

Loopback registries (127.0.0.0/8, localhost, ::1) are spoken to in plain HTTP, as Docker itself treats them as
insecure by default; every other host over HTTPS. No registry authentication yet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

import httpx

from hub.errors import RegistryError

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ImageRef:
    """``registry/repository:tag`` or ``registry/repository@digest``; ``registry`` is None for a local name."""

    registry: str | None
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Split a reference; ValueError says what does not parse."""
        name, _, digest = text.strip().partition("@")
        if digest and not DIGEST.match(digest):
            raise ValueError(f"{text!r}: a digest is sha256: and 64 lowercase hex digits")
        registry = None
        first, slash, rest = name.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, name = first, rest
        tag = None
        if ":" in name:
            name, tag = name.rsplit(":", 1)
            if not _TAG.match(tag):
                raise ValueError(f"{text!r}: bad tag {tag!r}")
        if not _REPO.match(name):
            raise ValueError(f"{text!r}: bad repository name {name!r} (lowercase letters, digits, . _ - and /)")
        return cls(registry, name, tag, digest or None)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    def by_digest(self, digest: str) -> str:
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        if self.digest:
            return self.by_digest(self.digest)
        return f"{self.name}:{self.tag}" if self.tag else self.name


def is_loopback(registry: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost, with or without a port."""
    if registry.startswith("["):  # [::1]:5000
        host = registry[1:].partition("]")[0]
    else:
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_resolution(reference: str) -> bool:
    """True when ``reference`` names a registry host and no digest: a tag to resolve before it is recorded."""
    try:
        ref = ImageRef.parse(reference)
    except ValueError:
        return False
    return ref.registry is not None and ref.digest is None


class DigestResolver:
    """Resolves ``registry/repo:tag`` to ``registry/repo@sha256:...``; ``transport`` replaces the network in tests."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None, timeout: float = TIMEOUT) -> None:
        self._transport = transport
        self._timeout = timeout

    async def resolve(self, reference: str) -> str:
        """The reference by digest; one already by digest is returned as is. RegistryError on any failure."""
        try:
            ref = ImageRef.parse(reference)
        except ValueError as exc:
            raise RegistryError(reference, str(exc)) from None
        if ref.digest is not None:
            return str(ref)
        if ref.registry is None:
            raise RegistryError(
                reference,
                "names no registry: write host:port/repository:tag, a reference by digest, or use --local-id "
                "for an image that was never pushed",
            )
        scheme = "http" if is_loopback(ref.registry) else "https"
        url = f"{scheme}://{ref.registry}/v2/{ref.repository}/manifests/{ref.tag or 'latest'}"
        headers = {"Accept": ACCEPT}
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=self._timeout) as http:
                response = await http.head(url, headers=headers)
                digest = _digest_header(response) if response.status_code == 200 else None
                if digest is None and response.status_code not in (401, 403, 404):
                    response = await http.get(url, headers=headers)
                    if response.status_code == 200:
                        digest = _digest_header(response) or f"sha256:{hashlib.sha256(response.content).hexdigest()}"
        except httpx.TimeoutException:
            late = f"the registry {ref.registry} did not answer within {self._timeout:g}s"
            raise RegistryError(reference, late) from None
        except httpx.HTTPError as exc:
            raise RegistryError(reference, f"the registry {ref.registry} is unreachable ({url}): {exc}") from None
        if digest is not None:
            return ref.by_digest(digest)
        raise RegistryError(reference, _refusal(ref, response.status_code))


def _digest_header(response: httpx.Response) -> str | None:
    value = response.headers.get("Docker-Content-Digest", "").strip()
    return value if DIGEST.match(value) else None


def _refusal(ref: ImageRef, status: int) -> str:
    where = f"the registry {ref.registry}"
    if status == 404:
        return f"{where} has no manifest for {ref.repository}:{ref.tag or 'latest'} (unknown repository or tag)"
    if status in (401, 403):
        return f"{where} refused access ({status}): registries that need authentication are not supported yet"
    return f"{where} answered {status} for the manifest of {ref.repository}:{ref.tag or 'latest'}"
