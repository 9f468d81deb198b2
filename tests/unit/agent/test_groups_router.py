"""Group keys (topic levels, result and payload fields) and the topic router with its bounded cache."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.aggregation.groups import group_key
from edge_agent.router import Router
from edge_protocol.topics import topic_matches


def test_no_keys_is_one_group() -> None:
    assert group_key([])("a/b", {"site": "x"}, {"v": 1}) == ""


def test_topic_levels() -> None:
    key = group_key(["topic[1]", "topic[0]"])
    assert key("sensors/s1/temp", None, {}) == "topic[1]=s1,topic[0]=sensors"
    assert key("only", None, {}) == "topic[1]=,topic[0]=only"
    assert group_key(["topic[2]"])("a//c", None, {}) == "topic[2]=c"


def test_field_keys_prefer_result_values_then_payload() -> None:
    key = group_key(["site", "line"])
    assert key("t", {"site": "p", "line": 4}, {"site": "r"}) == "site=r,line=4"
    assert key("t", {"site": "p"}, {}) == "site=p,line="
    assert key("t", [1, 2], {}) == "site=,line="
    assert key("t", "text", {"line": 7}) == "site=,line=7"


def test_mixed_keys() -> None:
    key = group_key(["topic[1]", "site"])
    assert key("sensors/s9/temp", {"site": "a"}, {}) == "topic[1]=s9,site=a"
    assert key("sensors/s9/temp", {"site": "a"}, {}) != key("sensors/s8/temp", {"site": "a"}, {})


def test_router_matches_every_target() -> None:
    router = Router([("sensors/+/temp", "temp"), ("sensors/#", "all"), ("other", "other")])
    assert router.match("sensors/s1/temp") == ["temp", "all"]
    assert router.match("sensors/s1/hum") == ["all"]
    assert router.match("nothing") == []
    assert router.filters() == ["other", "sensors/#", "sensors/+/temp"]


def test_router_cache_is_bounded_and_still_correct() -> None:
    router = Router([("a/+", 1), ("#", 2)], cache_size=8)
    for i in range(100):
        assert router.match(f"a/{i}") == [1, 2]
        assert len(router._cache) <= 8
    assert router.match("b") == [2]
    assert router.match("a/1") == [1, 2]  # a topic evicted from the cache still routes the same


FILTERS = ["a/+", "a/#", "+/b", "#", "a/b", "+/+", "c"]


@given(
    st.lists(st.sampled_from(["a", "b", "c", ""]), min_size=1, max_size=4).map("/".join),
    st.lists(st.sampled_from(FILTERS), max_size=5, unique=True),
)
def test_router_agrees_with_topic_matches(topic: str, filters: list[str]) -> None:
    router = Router([(f, f) for f in filters], cache_size=2)
    expected = [f for f in filters if topic_matches(f, topic)]
    assert router.match(topic) == expected
    assert router.match(topic) == expected  # cached answer
