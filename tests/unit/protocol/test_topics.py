"""Topic building/parsing and MQTT filter matching, checked against an independent regex reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_protocol.topics import DEVICE_CHANNELS, Topics, topic_matches, validate_filter


def reference_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching, written as a regex so that it shares no code with the implementation."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    if topic_filter == "#":
        return True
    parts = topic_filter.split("/")
    multi = parts[-1] == "#"
    if multi:
        parts = parts[:-1]
    pattern = "/".join("[^/]*" if p == "+" else re.escape(p) for p in parts)
    if multi:
        pattern += "(/.*)?"  # '#' also matches the parent level itself
    return re.fullmatch(pattern, topic, flags=re.DOTALL) is not None


LEVELS = st.sampled_from(["a", "b", "c", "", "$SYS", "x y"])
topics = st.lists(LEVELS, min_size=1, max_size=5).map("/".join)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(LEVELS, st.just("+")), min_size=1, max_size=5))
    if draw(st.booleans()):
        levels = [*levels[: draw(st.integers(0, len(levels)))], "#"]
    flt = "/".join(levels)
    return flt or "+"  # the empty filter is invalid (tested separately)


@given(filters(), topics)
@settings(max_examples=400)
def test_matches_reference(topic_filter: str, topic: str) -> None:
    assert validate_filter(topic_filter) == topic_filter
    assert topic_matches(topic_filter, topic) == reference_matches(topic_filter, topic)


@given(topics)
def test_topic_matches_itself_and_hash(topic: str) -> None:
    assert topic_matches(topic, topic)
    assert topic_matches("#", topic) == (not topic.startswith("$"))


@pytest.mark.parametrize(
    ("flt", "topic", "expected"),
    [
        ("sport/#", "sport", True),
        ("sport/#", "sport/tennis/player1", True),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "$SYS/broker", False),
        ("+/monitor", "$SYS/monitor", False),
        ("$SYS/#", "$SYS/broker", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_spec_examples(flt: str, topic: str, expected: bool) -> None:
    assert topic_matches(flt, topic) is expected


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ("", "cannot be empty"),
        ("a/#/b", "'#' must be a whole last level"),
        ("a#", "'#' must be a whole last level"),
        ("a/b#", "'#' must be a whole last level"),
        ("a+/b", "'\\+' must be a whole level"),
        ("a/+b", "'\\+' must be a whole level"),
    ],
)
def test_validate_filter_errors(flt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_filter(flt)


@pytest.mark.parametrize("flt", ["#", "+", "a/+/c", "a/#", "+/+/#", "/"])
def test_validate_filter_accepts(flt: str) -> None:
    assert validate_filter(flt) == flt


def test_topics_build_and_parse() -> None:
    t = Topics("fleet")
    assert t.status("d1") == "fleet/devices/d1/status"
    assert t.aggregates("d1") == "fleet/devices/d1/aggregates"
    assert t.shared("aggregates") == "$share/hub/fleet/devices/+/aggregates"
    assert t.deadletter("temp") == "fleet/deadletter/temp"
    for channel in DEVICE_CHANNELS:
        assert t.parse_device(t.device("dev-7", channel)) == ("dev-7", channel)
        assert topic_matches(t.all_devices(channel), t.device("dev-7", channel))


@pytest.mark.parametrize(
    "topic",
    [
        "other/devices/d1/status",
        "fleet/devices/d1/unknown",
        "fleet/devices//status",
        "fleet/devices/d1/status/extra",
        "fleet/devices/d1",
        "fleetx/devices/d1/status",
    ],
)
def test_parse_device_rejects(topic: str) -> None:
    assert Topics("fleet").parse_device(topic) is None


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a\x00"])
def test_segments_are_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="must be non-empty"):
        Topics().status(bad)
    with pytest.raises(ValueError, match="must be non-empty"):
        Topics().deadletter(bad)
