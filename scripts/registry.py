"""A real image registry (Debian's docker-registry, the Distribution registry v2) and push/pull, for demo and tests.

The engine treats 127.0.0.0/8 registries as insecure (plain HTTP), so a registry on a loopback port needs no TLS.
Images are pinned by digest (`127.0.0.1:PORT/repo@sha256:...`); `remove_local_copies` drops the engine's
references to them so that whoever runs one next (an agent under test) must really pull it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from typing import IO

import docker
import docker.errors
import httpx

from scripts.loopback import HOST, LoopbackService

DOCKER_REGISTRY = "/usr/bin/docker-registry"
# Version -> local image, pushed by `push_releases` as <registry>/temp-c:<version>.
RELEASES: Mapping[str, str] = {
    "1.0": "edgefleet/temp-c:dev",
    "1.1": "edgefleet/temp-c-v2:dev",
    "1.2-exit": "edgefleet/broken-exit:dev",
    "1.2-errors": "edgefleet/broken-errors:dev",
}
RELEASE_REPOSITORY = "temp-c"
# A well-formed digest that no registry holds: sha256 of a fixed string.
NO_SUCH_DIGEST = "sha256:" + hashlib.sha256(b"edgefleet: no such image").hexdigest()


class PushError(RuntimeError):
    """The engine reported an error while pushing, or no digest for what it pushed."""


def registry_answers(url: str, timeout: float = 2.0) -> bool:
    """True when `GET {url}/v2/` answers 200 within `timeout` seconds (proxies from the environment ignored)."""
    try:
        return httpx.get(f"{url}/v2/", timeout=timeout, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


class Registry(LoopbackService):
    """A `docker-registry serve` process with filesystem storage in a temp dir, on a free loopback port.

    Deleting manifests and blobs is enabled. `restart()` keeps the port and the stored images. Debian's default
    /etc/docker/registry/config.yml (htpasswd auth, port 5000) is never read: the config is written here, as
    JSON (a subset of YAML), and REGISTRY_* variables, which would override it, are removed from the environment.
    """

    name = "the registry"

    def __init__(self, *, port: int | None = None, binary: str = DOCKER_REGISTRY, start_timeout: float = 10.0) -> None:
        super().__init__(port=port, start_timeout=start_timeout, prefix="edgefleet-registry-")
        self._binary = binary
        self.storage_dir = self.dir / "storage"
        self.config_path = self.dir / "config.yml"
        self.log_path = self.dir / "registry.log"

    @property
    def host_port(self) -> str:
        """`127.0.0.1:PORT`, the registry part of an image reference."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def repository(self, name: str) -> str:
        """The full repository name of `name` in this registry, e.g. `127.0.0.1:PORT/temp-c`."""
        return f"{self.host_port}/{name}"

    def _write_config(self) -> None:
        config = {
            "version": "0.1",  # required; Debian's 2.8 refuses a config without it
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                # The purger would otherwise wake up in the background and walk the storage.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # secret: without one the registry logs a warning and makes a random one on every start.
            "http": {"addr": self.host_port, "secret": "edgefleet-tests"},
            "health": {"storagedriver": {"enabled": False}},
        }
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def log_text(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(errors="replace")
        return ""

    def _answers(self, proc: subprocess.Popen[bytes], log_offset: int) -> bool:
        # "listening on" is logged once the port is bound: before that, whatever answers there is another process.
        try:
            with self.log_path.open("rb") as log:
                log.seek(log_offset)
                bound = f"listening on {self.host_port}".encode() in log.read()
        except FileNotFoundError:
            bound = False
        return bound and registry_answers(self.url) and proc.poll() is None

    def _command(self) -> list[str]:
        return [self._binary, "serve", str(self.config_path)]

    def _output(self) -> IO[bytes]:
        return self.log_path.open("ab")

    def _env(self) -> dict[str, str]:
        # REGISTRY_* variables override the config file: none may leak in from the environment.
        return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest the registry gives `repository` (name in this registry) at a tag or digest; None if unknown."""
        accept = ", ".join(
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
            )
        )
        resp = httpx.head(
            f"{self.url}/v2/{repository}/manifests/{reference}",
            headers={"Accept": accept},
            timeout=10,
            trust_env=False,
        )
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.headers["Docker-Content-Digest"]

    def __repr__(self) -> str:
        return f"Registry({self.url}, running={self.running})"


def push_image(client: docker.DockerClient, image: str, repository: str, tag: str) -> str:
    """Tag local `image` as `repository:tag`, push it, and return the pinned reference `repository@sha256:...`.

    The digest is the one the push reports (its aux line), checked against the image's RepoDigests.
    """
    client.images.get(image).tag(repository, tag)
    digest: str | None = None
    errors: list[str] = []
    for line in client.api.push(repository, tag=tag, stream=True, decode=True):
        if "error" in line or "errorDetail" in line:
            errors.append(str(line.get("error") or line.get("errorDetail")))
        aux = line.get("aux") or {}
        if aux.get("Digest"):
            digest = str(aux["Digest"])
    if errors or digest is None:
        raise PushError(f"pushing {image} as {repository}:{tag}: {'; '.join(errors) or 'no digest reported'}")
    reference = f"{repository}@{digest}"
    repo_digests = client.images.get(image).attrs.get("RepoDigests") or []
    if reference not in repo_digests:
        raise PushError(f"pushed {image} as {reference}, but its RepoDigests are {repo_digests}")
    return reference


def repository_of(reference: str) -> str:
    """`host:port/name` of `host:port/name:tag` or `host:port/name@sha256:...`."""
    name = reference.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def local_references(client: docker.DockerClient, prefix: str) -> list[str]:
    """Every local tag and digest reference whose repository is `prefix` or lies under `prefix/`."""
    prefix = prefix.rstrip("/")
    refs = []
    for image in client.images.list():
        for ref in (image.attrs.get("RepoTags") or []) + (image.attrs.get("RepoDigests") or []):
            repo = repository_of(ref)
            if repo == prefix or repo.startswith(prefix + "/"):
                refs.append(ref)
    return refs


def has_local(client: docker.DockerClient, reference: str) -> bool:
    """True when the engine resolves `reference` without pulling."""
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


def remove_local_copies(client: docker.DockerClient, prefix: str) -> list[str]:
    """Untag every local reference under `prefix` (a registry's `host:port` or a repository); returns them.

    Only references go: the image itself stays while another name (`edgefleet/temp-c:dev`) holds it, so its
    layers need not travel again, but running the reference needs a pull, which asks the registry.
    """
    refs = local_references(client, prefix)
    for ref in refs:
        # NotFound: gone with an earlier reference of the same image (or removed concurrently).
        with contextlib.suppress(docker.errors.NotFound):
            client.images.remove(ref)
    return refs


def push_releases(
    client: docker.DockerClient,
    registry: Registry,
    releases: Mapping[str, str] = RELEASES,
    repository: str = RELEASE_REPOSITORY,
) -> dict[str, str]:
    """Push each local image of `releases` (version -> image) as `<registry>/<repository>:<version>`.

    Returns version -> `repository@sha256:...`, with no local reference left under the registry.
    """
    repo = registry.repository(repository)
    refs = {version: push_image(client, image, repo, version) for version, image in releases.items()}
    remove_local_copies(client, registry.host_port)
    return refs


@contextlib.contextmanager
def unreachable_port(host: str = HOST) -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: bound (so nobody else takes it), never
    listening, so a connect gets a reset at once rather than hanging."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])
