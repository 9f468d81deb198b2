"""Resolving image tags to digests against a fake registry (httpx MockTransport): the request, the fallbacks and
every error a person may meet."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from hub.desired.image_registry import ACCEPT, MANIFEST_TYPES, DigestResolver, ImageRef, is_loopback, needs_resolution
from hub.errors import RegistryError

DIGEST = "sha256:" + "ab" * 32
MANIFEST = b'{"schemaVersion": 2}'


def resolver(handler: httpx.MockTransport | None = None, seen: list[httpx.Request] | None = None) -> DigestResolver:
    def answer(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    return DigestResolver(transport=handler or httpx.MockTransport(answer))


async def test_a_tag_resolves_to_repo_at_digest_with_a_head_request_accepting_every_manifest_type() -> None:
    seen: list[httpx.Request] = []
    assert await resolver(seen=seen).resolve("127.0.0.1:5000/temp-c:1.1") == f"127.0.0.1:5000/temp-c@{DIGEST}"
    (request,) = seen
    assert (request.method, str(request.url)) == ("HEAD", "http://127.0.0.1:5000/v2/temp-c/manifests/1.1")
    accepted = [part.strip() for part in request.headers["Accept"].split(",")]
    assert accepted == list(MANIFEST_TYPES)
    assert "application/vnd.oci.image.index.v1+json" in ACCEPT
    assert "application/vnd.docker.distribution.manifest.list.v2+json" in ACCEPT


async def test_https_beyond_loopback_latest_by_default_and_nested_repositories() -> None:
    seen: list[httpx.Request] = []
    ref = await resolver(seen=seen).resolve("registry.example.com:5000/team/temp-c")
    assert ref == f"registry.example.com:5000/team/temp-c@{DIGEST}"
    assert str(seen[0].url) == "https://registry.example.com:5000/v2/team/temp-c/manifests/latest"
    await resolver(seen=seen).resolve("localhost:5000/x:1")
    assert seen[-1].url.scheme == "http"


async def test_head_refused_falls_back_to_get_and_to_the_body_hash_without_a_header() -> None:
    methods: list[str] = []

    def head_refused(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        if request.method == "HEAD":
            return httpx.Response(405)
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST}, content=MANIFEST)

    got = await DigestResolver(transport=httpx.MockTransport(head_refused)).resolve("127.0.0.1:5000/a:1")
    assert (got, methods) == (f"127.0.0.1:5000/a@{DIGEST}", ["HEAD", "GET"])

    def no_header(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=MANIFEST if request.method == "GET" else b"")

    got = await DigestResolver(transport=httpx.MockTransport(no_header)).resolve("127.0.0.1:5000/a:1")
    assert got == f"127.0.0.1:5000/a@sha256:{hashlib.sha256(MANIFEST).hexdigest()}"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (404, "has no manifest for temp-c:9.9 (unknown repository or tag)"),
        (401, "refused access (401): registries that need authentication are not supported yet"),
        (500, "answered 500 for the manifest of temp-c:9.9"),
    ],
)
async def test_registry_refusals_are_clear(status: int, message: str) -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(status))
    with pytest.raises(RegistryError) as caught:
        await DigestResolver(transport=transport).resolve("127.0.0.1:5000/temp-c:9.9")
    assert message in str(caught.value)
    assert caught.value.reference == "127.0.0.1:5000/temp-c:9.9"


async def test_an_unreachable_registry_says_so() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(RegistryError, match=r"the registry 127\.0\.0\.1:5999 is unreachable"):
        await DigestResolver(transport=httpx.MockTransport(down)).resolve("127.0.0.1:5999/temp-c:1")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(RegistryError, match="did not answer within"):
        await DigestResolver(transport=httpx.MockTransport(slow)).resolve("127.0.0.1:5999/temp-c:1")


async def test_digests_are_taken_as_is_and_names_without_a_registry_are_refused() -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request expected: {request.url}")

    quiet = DigestResolver(transport=httpx.MockTransport(never))
    assert await quiet.resolve(f"127.0.0.1:5000/temp-c@{DIGEST}") == f"127.0.0.1:5000/temp-c@{DIGEST}"
    with pytest.raises(RegistryError, match="names no registry"):
        await quiet.resolve("edgefleet/temp-c:1")
    with pytest.raises(RegistryError, match="64 lowercase hex"):
        await quiet.resolve("127.0.0.1:5000/temp-c@sha256:abc")


def test_references_and_loopback_hosts() -> None:
    assert ImageRef.parse("127.0.0.1:5000/a/b:1.0") == ImageRef("127.0.0.1:5000", "a/b", "1.0")
    assert ImageRef.parse("edgefleet/temp-c:dev") == ImageRef(None, "edgefleet/temp-c", "dev")
    assert str(ImageRef.parse(f"localhost/x@{DIGEST}")) == f"localhost/x@{DIGEST}"
    with pytest.raises(ValueError, match="bad repository name"):
        ImageRef.parse("127.0.0.1:5000/Temp")
    assert [is_loopback(h) for h in ("127.0.0.1:5000", "127.8.9.1", "localhost:1", "[::1]:5000", "10.0.0.1:5000")] == [
        True,
        True,
        True,
        True,
        False,
    ]
    assert needs_resolution("127.0.0.1:5000/temp-c:1.1")
    assert not needs_resolution("edgefleet/temp-c:1")
    assert not needs_resolution(f"127.0.0.1:5000/temp-c@{DIGEST}")
    assert not needs_resolution("sha256:" + "0" * 64)
