"""The image registry fixtures: a real Distribution registry, release images pinned by digest, fast failures."""

from __future__ import annotations

import hashlib
import json
import re
import time

import docker
import docker.errors
import httpx
import pytest

from scripts.registry import (
    NO_SUCH_DIGEST,
    RELEASE_REPOSITORY,
    RELEASES,
    Registry,
    has_local,
    registry_answers,
    remove_local_copies,
)

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
FAIL_FAST_S = 10.0  # a failed pull must say so well within this, not hang until some client timeout


def test_registry_fixture_answers(registry: Registry) -> None:
    resp = httpx.get(f"{registry.url}/v2/", timeout=5, trust_env=False)
    assert resp.status_code == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", registry.host_port)
    assert registry.running


def test_registry_restart_keeps_port_and_content() -> None:
    blob = b"edgefleet registry restart probe"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with Registry() as reg:
        port = reg.port
        upload = httpx.post(f"{reg.url}/v2/probe/blobs/uploads/", timeout=5, trust_env=False)
        assert upload.status_code == 202, upload.text
        # The upload URL carries its own state in the query string: add the digest to it, do not replace it.
        location = httpx.URL(reg.url).join(upload.headers["Location"]).copy_merge_params({"digest": digest})
        put = httpx.put(location, content=blob, timeout=5, trust_env=False)
        assert put.status_code == 201, put.text

        reg.kill()
        assert not reg.running
        assert not registry_answers(reg.url, timeout=1)
        reg.start()
        assert reg.port == port
        got = httpx.get(f"{reg.url}/v2/probe/blobs/{digest}", timeout=5, trust_env=False)
        assert (got.status_code, got.content) == (200, blob)


def test_release_images_are_pinned_by_digest_and_not_local(
    docker_client: docker.DockerClient, registry: Registry, release_images: dict[str, str]
) -> None:
    assert set(release_images) == set(RELEASES)
    repo = registry.repository(RELEASE_REPOSITORY)
    for version, ref in release_images.items():
        assert re.fullmatch(rf"{re.escape(repo)}@sha256:[0-9a-f]{{64}}", ref), ref
        assert registry.manifest_digest(RELEASE_REPOSITORY, version) == ref.split("@", 1)[1]
        assert not has_local(docker_client, ref), f"{ref} is still local: running it would not pull"
    assert len(set(release_images.values())) == len(RELEASES)


def test_pushed_image_is_pulled_back_by_digest_and_the_digest_is_stable(
    docker_client: docker.DockerClient, registry: Registry, release_images: dict[str, str]
) -> None:
    ref = release_images["1.1"]
    built = docker_client.images.get(RELEASES["1.1"]).id
    try:
        first = docker_client.images.pull(ref)
        assert first.id == built
        assert ref in first.attrs["RepoDigests"]

        assert ref in remove_local_copies(docker_client, registry.host_port)
        assert not has_local(docker_client, ref)

        second = docker_client.images.pull(ref)
        assert second.id == built
        assert ref in second.attrs["RepoDigests"]
        assert registry.manifest_digest(RELEASE_REPOSITORY, "1.1") == ref.split("@", 1)[1]
    finally:
        remove_local_copies(docker_client, registry.host_port)


# (exit status, replies to a ping and one event {"f": 212}) of each release.
EXPECTED = {
    "1.0": (0, [{"kind": "pong", "id": "p"}, {"kind": "result", "id": 1, "values": {"c": 100.0, "hot": True, "v": 1}}]),
    "1.1": (0, [{"kind": "pong", "id": "p"}, {"kind": "result", "id": 1, "values": {"c": 100.0, "hot": True, "v": 2}}]),
    "1.2-exit": (3, []),
    "1.2-errors": (0, [{"kind": "pong", "id": "p"}, {"kind": "error", "id": 1}]),
}


@pytest.mark.parametrize("version", sorted(EXPECTED))
def test_release_image_pulled_by_digest_behaves_as_its_version(
    docker_client: docker.DockerClient,
    registry: Registry,
    release_images: dict[str, str],
    device_id: str,
    version: str,
) -> None:
    lines = [{"kind": "ping", "id": "p"}, {"kind": "event", "id": 1, "topic": "t", "payload": {"f": 212}, "ts": 1.0}]
    try:
        docker_client.images.pull(release_images[version])
        # The handler reads stdin to EOF: feed it through a pipe instead of attaching.
        container = docker_client.containers.create(
            release_images[version],
            entrypoint=["sh", "-c", 'printf "%s\\n" "$0" "$1" | exec python3 /app/handler.py'],
            command=[json.dumps(line) for line in lines],
            network_mode="none",
            labels={"edgefleet.device": device_id, "edgefleet.handler": "temp-c"},
        )
        container.start()
        status = container.wait(timeout=TIMEOUT)["StatusCode"]
        stdout = container.logs(stdout=True, stderr=False).decode()
        stderr = container.logs(stdout=False, stderr=True).decode()
    finally:
        remove_local_copies(docker_client, registry.host_port)
    replies = [json.loads(line) for line in stdout.splitlines()]
    for reply in replies:
        reply.pop("error", None)  # the reason's wording is the handler's business
    assert (status, replies) == EXPECTED[version], stderr
    if version == "1.2-exit":
        assert "refusing to start" in stderr


def test_unreachable_registry_fails_fast(docker_client: docker.DockerClient, unreachable_registry_ref: str) -> None:
    started = time.monotonic()
    with pytest.raises(docker.errors.APIError) as info:
        docker_client.images.pull(unreachable_registry_ref)
    assert time.monotonic() - started < FAIL_FAST_S
    assert "connection refused" in str(info.value)
    assert not has_local(docker_client, unreachable_registry_ref)


def test_unknown_digest_fails_fast_with_not_found(docker_client: docker.DockerClient, registry: Registry) -> None:
    started = time.monotonic()
    with pytest.raises(docker.errors.NotFound, match="manifest unknown"):
        docker_client.images.pull(f"{registry.repository(RELEASE_REPOSITORY)}@{NO_SUCH_DIGEST}")
    assert time.monotonic() - started < FAIL_FAST_S
