"""Shared fixtures: real mosquitto brokers, the real Docker engine, an image registry, unique names per test.

`--slow` enables tests marked `slow`; `--soak` lengthens the fault suite's outages (tests/faults/conftest.py).
Docker fixtures fail (never skip) when no engine answers: CI has one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from hypothesis import settings

from scripts.mosquitto import Mosquitto
from scripts.registry import (
    NO_SUCH_DIGEST,
    RELEASE_REPOSITORY,
    Registry,
    push_releases,
    remove_local_copies,
    unreachable_port,
)
from tests.support.engine import (
    HANDLER_IMAGES,
    RELEASE_IMAGES,
    EngineUnavailableError,
    connect_engine,
    ensure_handler_images,
    remove_labelled,
)
from tests.support.rig import Rig
from tests.support.secure_broker import SecureCloud

# No per-example deadline: a loaded CI machine (2 cores, engine and brokers running) makes timing
# flaky, and speed is measured by bench/, not by tests.
settings.register_profile("edgefleet", deadline=None, print_blob=True)
settings.load_profile("edgefleet")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False, help="also run tests marked slow")
    parser.addoption("--soak", action="store_true", default=False, help="fault suite: long outages (tests/faults)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def device_broker() -> Iterator[Mosquitto]:
    """The device-side broker shared by the whole run; isolate tests with `topic_prefix`."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def cloud_broker() -> Iterator[Mosquitto]:
    """The cloud-side broker shared by the whole run; isolate tests with `topic_prefix` and `device_id`."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def fresh_broker() -> Iterator[Callable[..., Mosquitto]]:
    """Factory for brokers of this test alone (to kill or restart); all are stopped at teardown."""
    brokers: list[Mosquitto] = []

    def make(**kwargs: Any) -> Mosquitto:
        broker = Mosquitto(**kwargs)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = connect_engine()
    except EngineUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def handler_images(docker_client: docker.DockerClient) -> dict[str, str]:
    """Image name -> id of edgefleet/temp-c:dev and edgefleet/passthrough:dev, built when needed."""
    return ensure_handler_images(docker_client)


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """An image registry on a free loopback port shared by the whole run; isolate tests by repository name."""
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def release_images(docker_client: docker.DockerClient, registry: Registry) -> Iterator[dict[str, str]]:
    """Version -> `127.0.0.1:PORT/temp-c@sha256:...` for temp-c 1.0, 1.1 (temp-c-v2), 1.2-exit and 1.2-errors.

    Built when needed and pushed to `registry`; no local reference to them is left, so running one means pulling.
    A test that pulls one and needs it gone again calls `remove_local_copies(docker_client, registry.host_port)`.
    """
    ensure_handler_images(docker_client, HANDLER_IMAGES + RELEASE_IMAGES)
    yield push_releases(docker_client, registry)
    remove_local_copies(docker_client, registry.host_port)


@pytest.fixture
def unreachable_registry_ref() -> Iterator[str]:
    """A digest reference to a registry on a loopback port that refuses connections for the whole test."""
    with unreachable_port() as port:
        yield f"127.0.0.1:{port}/{RELEASE_REPOSITORY}@{NO_SUCH_DIGEST}"


@pytest.fixture
def device_id(request: pytest.FixtureRequest) -> Iterator[str]:
    """A device id of this test alone; containers labelled with it are removed at teardown.

    Several agents share one engine in tests, so cleanup goes by label, never by image or name.
    """
    device = f"dev-{uuid.uuid4().hex[:8]}"
    yield device
    # Only tests that reach the engine can have created containers; others must not need one.
    if "docker_client" in request.fixturenames:
        remove_labelled(request.getfixturevalue("docker_client"), device)


@pytest.fixture(scope="module")
def secure_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCloud]:
    """A cloud broker secured with the hub's CA and dynamic-security plugin, for one test module.

    Built with `hub keys init`, `hub ca init`, `hub ca server-cert` and `hub broker init-dynsec`; isolate
    tests by device id (the prefix is the module's).
    """
    with SecureCloud(tmp_path_factory.mktemp("secure-cloud"), f"s{uuid.uuid4().hex[:8]}") as cloud:
        yield cloud


@pytest.fixture
def rig(device_broker: Mosquitto, device_id: str, topic_prefix: str, tmp_path: Path) -> Rig:
    """The shared device broker, this test's device id and topic prefix, and ``tmp_path / "agent"`` as data dir."""
    return Rig(broker=device_broker, device_id=device_id, prefix=topic_prefix, data_dir=tmp_path / "agent")
