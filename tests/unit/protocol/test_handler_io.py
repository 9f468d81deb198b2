"""The handler line protocol: encode_event / encode_ping and decode_reply on good and bad lines."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_protocol.handler_io import (
    ErrorLine,
    EventLine,
    PongLine,
    ReplyError,
    ResultLine,
    decode_reply,
    encode_event,
    encode_ping,
)


def test_decode_result() -> None:
    line = b'{"kind":"result","id":7,"values":{"c":21.5},"publish":[{"topic":"alerts/hot","payload":{"c":21.5}}]}'
    reply = decode_reply(line)
    assert (reply.kind, reply.id, reply.values, reply.error) == ("result", 7, {"c": 21.5}, "")
    assert len(reply.publish) == 1
    assert (reply.publish[0].topic, reply.publish[0].payload, reply.publish[0].qos) == ("alerts/hot", {"c": 21.5}, 0)
    ResultLine.model_validate_json(line)  # the documenting model agrees


def test_decode_result_defaults() -> None:
    reply = decode_reply(b'{"kind":"result","id":1}')
    assert (reply.values, reply.publish) == ({}, [])
    assert decode_reply(b'{"kind":"result","id":1,"publish":[]}').publish == []


def test_decode_error_and_pong() -> None:
    err = decode_reply(b'{"kind":"error","id":3,"error":"boom"}')
    assert (err.kind, err.id, err.error) == ("error", 3, "boom")
    assert decode_reply(b'{"kind":"error","id":null,"error":"no id"}').id is None
    assert len(decode_reply(orjson.dumps({"kind": "error", "id": 1, "error": "x" * 5000})).error) == 1000
    pong = decode_reply(b'{"kind":"pong","id":9}')
    assert (pong.kind, pong.id) == ("pong", 9)
    ErrorLine.model_validate_json(b'{"kind":"error","id":3,"error":"boom"}')
    PongLine.model_validate_json(b'{"kind":"pong","id":9}')


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b'{"kind":"result","id":1', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "JSON object"),
        (b'"result"', "JSON object"),
        (b'{"kind":"result"}', "needs an 'id'"),
        (b'{"kind":"result","id":true}', "'id' must be an integer"),
        (b'{"kind":"result","id":"1"}', "'id' must be an integer"),
        (b'{"kind":"result","id":1.5}', "'id' must be an integer"),
        (b'{"kind":"result","id":1,"values":[1]}', "'values' must be an object"),
        (b'{"kind":"result","id":1,"publish":"x"}', "'publish' must be a list"),
        (b'{"kind":"result","id":1,"publish":{}}', "'publish' must be a list"),
        (b'{"kind":"result","id":1,"publish":false}', "'publish' must be a list"),
        (b'{"kind":"result","id":1,"publish":[{"payload":1}]}', "bad 'publish' entry"),
        (b'{"kind":"result","id":1,"publish":[{"topic":"","payload":1}]}', "bad 'publish' entry"),
        (b'{"kind":"result","id":1,"publish":[{"topic":"t","payload":1,"qos":2}]}', "bad 'publish' entry"),
        (b'{"kind":"result","id":1,"publish":[{"topic":"t","payload":1,"x":2}]}', "bad 'publish' entry"),
        (b'{"kind":"result","id":1,"publish":["t"]}', "bad 'publish' entry"),
        (b'{"kind":"event","id":1}', "unknown kind"),
        (b'{"id":1}', "unknown kind"),
    ],
)
def test_decode_rejects(line: bytes, reason: str) -> None:
    with pytest.raises(ReplyError, match=reason):
        decode_reply(line)


def test_ping_line() -> None:
    assert encode_ping(42) == b'{"kind":"ping","id":42}\n'
    assert orjson.loads(encode_ping(42)) == {"kind": "ping", "id": 42}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    json_values,
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_encode_event_is_one_line(event_id: int, topic: str, payload: object, ts: float) -> None:
    line = encode_event(event_id, topic, payload, ts)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert orjson.loads(line) == {"kind": "event", "id": event_id, "topic": topic, "payload": payload, "ts": ts}
    assert EventLine.model_validate_json(line).id == event_id
