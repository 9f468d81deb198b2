"""Shared fixtures: real mosquitto brokers, the real Docker engine, unique names per test.

`--slow` enables tests marked `slow`. Docker fixtures fail (never skip) when no engine answers: CI has one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from tests.support.brokers import Mosquitto
from tests.support.engine import (
    EngineUnavailableError,
    connect_engine,
    ensure_handler_images,
    remove_labelled,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False, help="also run tests marked slow")


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
