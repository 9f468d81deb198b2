"""The API client turns HTTP failures into messages a person can act on."""

from __future__ import annotations

import httpx
import pytest

from hub.cli.client import HubClient
from hub.errors import ClientError


def answering(status: int, body: object, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


def test_sends_the_token_and_only_the_given_filters() -> None:
    seen: list[httpx.Request] = []
    with HubClient("http://hub:1/", "tok", transport=answering(200, [], seen)) as hub:
        assert hub.aggregates(device="d1", since="10m") == []
    (request,) = seen
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.url.path == "/v1/aggregates"
    assert dict(request.url.params) == {"device": "d1", "since": "10m", "limit": "100"}


def test_a_refused_token() -> None:
    with HubClient(token="wrong", transport=answering(401, {"detail": "x"})) as hub, pytest.raises(ClientError) as info:
        hub.devices()
    assert (str(info.value), info.value.status) == ("the hub refused the token", 401)


def test_a_missing_token() -> None:
    with HubClient(transport=answering(401, {"detail": "x"})) as hub, pytest.raises(ClientError, match="needs a token"):
        hub.devices()


def test_validation_errors_are_readable() -> None:
    body = {"detail": [{"loc": ["query", "limit"], "msg": "Input should be greater than or equal to 1"}]}
    with HubClient(transport=answering(422, body)) as hub, pytest.raises(ClientError) as info:
        hub.aggregates(limit=0)
    assert str(info.value) == "the hub answered 422: limit: Input should be greater than or equal to 1"


def test_an_unreachable_hub() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    hub = HubClient("http://127.0.0.1:9", transport=httpx.MockTransport(refuse))
    with hub, pytest.raises(ClientError, match=r"cannot reach the hub at http://127.0.0.1:9 .*hub serve"):
        hub.devices()


def test_an_unexpected_answer() -> None:
    with HubClient(transport=answering(200, {"not": "a list"})) as hub, pytest.raises(ClientError, match="unexpected"):
        hub.aggregates()
