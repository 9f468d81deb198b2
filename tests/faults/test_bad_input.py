"""Bad input on the device broker: each event counted and dead-lettered with its reason; the agent keeps going."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.mqtt_clients import dead_letter_reasons, dead_letters, publish_all
from tests.support.rig import Rig
from tests.support.running import running_agent, wait_for
from tests.support.workloads import TEMP_C, temperature_events, temps_subscription

pytestmark = pytest.mark.integration

MAX_PAYLOAD = 150_000

# payload -> the dead-letter reason it must get
BAD_INPUT: dict[bytes, str] = {
    orjson.dumps({"f": 50.0, "pad": "x" * 200_000}): "oversized",
    b"\xff\xfe\xfd not utf-8": "invalid-json",
    b'{"f": "\xff"}': "invalid-json",  # invalid UTF-8 inside an otherwise valid JSON string
    b"[" * 100_000: "invalid-json",  # orjson refuses depth > 1024 before the payload reaches a handler
    b"[" * 60_000 + b"]" * 60_000: "invalid-json",  # the same, balanced (120 kB: under the size limit)
    b"": "invalid-json",
    b'{"f": "x"}': "handler-error",
    b'{"f": null}': "handler-error",
    b'{"f": [1, 2]}': "handler-error",
    b'"hot"': "handler-error",
}


async def test_bad_input_is_dead_lettered_and_counted(
    handler_images: dict[str, str],
    docker_client: Any,
    tmp_path: Path,
    rig: Rig,
) -> None:
    before, celsius_before = temperature_events(rig.prefix, 100, seed=51)
    among, celsius_among = temperature_events(rig.prefix, 100, seed=52)
    after, celsius_after = temperature_events(rig.prefix, 100, seed=53)
    valid = len(celsius_before) + len(celsius_among) + len(celsius_after)
    bad = [(f"{rig.prefix}/sensors/bad{i}/temperature", payload) for i, payload in enumerate(BAD_INPUT)]
    # Bad input interleaved with valid events: every 10th message is bad.
    mixed = list(among)
    for i, message in enumerate(bad):
        mixed.insert(i * 10, message)
    config = rig.agent_config(
        handlers=[TEMP_C],
        subscriptions=[temps_subscription(rig.prefix)],
        max_payload_bytes=MAX_PAYLOAD,
    )
    with dead_letters(rig.broker, rig.prefix) as letters:
        async with running_agent(config) as (state, agent_task):
            dispatcher = state.dispatchers["temps"]
            counters = dispatcher.counters
            await asyncio.to_thread(publish_all, rig.broker, before)
            await wait_for(lambda: counters.processed >= len(before), timeout=30, what="valid events before",
                           detail=state.counters)
            await asyncio.to_thread(publish_all, rig.broker, mixed)
            await wait_for(lambda: len(letters.records) >= len(bad), timeout=30, what="a dead letter per bad event",
                           detail=lambda: (state.counters(), dead_letter_reasons(letters).values()))
            # Still processing: valid events published after the bad ones go through.
            await asyncio.to_thread(publish_all, rig.broker, after)
            await wait_for(lambda: counters.processed >= valid and dispatcher.settled, timeout=30,
                           what="valid events after the bad ones processed", detail=state.counters)

            assert counters.processed == valid
            assert counters.received == valid + len(bad)
            assert dict(counters.dead_lettered) == dict(collections.Counter(BAD_INPUT.values()))
            got = dead_letter_reasons(letters)
            assert len(letters.records) == len(bad)
            assert got == BAD_INPUT, {p[:40]: (got.get(p), want) for p, want in BAD_INPUT.items() if got.get(p) != want}
            assert all(d.detail and d.subscription == "temps" and d.topic.startswith(f"{rig.prefix}/sensors/bad")
                       for d in letters.records)
            oversized = next(d for d in letters.records if d.reason == "oversized")
            assert str(MAX_PAYLOAD) in oversized.detail
            not_utf8 = next(d for d in letters.records if d.payload_bytes().startswith(b"\xff"))
            assert not_utf8.payload_encoding == "base64"
            assert sum(r.events for r in await _closed(state)) == valid
            assert not agent_task.done()


@pytest.mark.parametrize("depth", [300, 1000])
async def test_nesting_orjson_parses_but_cannot_encode_is_dead_lettered(
    handler_images: dict[str, str],
    docker_client: Any,
    tmp_path: Path,
    depth: int,
    rig: Rig,
) -> None:
    deep = b"[" * depth + b"]" * depth  # valid JSON within orjson's parse limit (1024); 600 bytes at depth 300
    valid, _celsius = temperature_events(rig.prefix, 10, seed=54)
    config = rig.agent_config(
        handlers=[TEMP_C],
        subscriptions=[temps_subscription(rig.prefix)],
    )
    with dead_letters(rig.broker, rig.prefix) as letters:
        async with running_agent(config) as (state, agent_task):
            counters = state.dispatchers["temps"].counters
            topic = f"{rig.prefix}/sensors/deep/temperature"
            await asyncio.to_thread(publish_all, rig.broker, [(topic, deep), *valid])
            await wait_for(lambda: (bool(letters.records) and counters.processed >= len(valid)) or agent_task.done(),
                           timeout=30, what="the deep event dead-lettered and the valid ones processed",
                           detail=state.counters)
            assert not agent_task.done(), f"the agent died: {agent_task.exception()!r}"
            assert [d.reason for d in letters.records] in (["invalid-json"], ["handler-error"])
            assert counters.processed == len(valid)


async def _closed(state: Any) -> list[Any]:
    from edge_protocol.aggregate import WindowResult

    assert state.outbox is not None
    return [WindowResult.model_validate_json(body) for _seq, body in await state.outbox.fetch(0, 100_000)]
