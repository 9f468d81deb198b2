"""The fleet simulator's messages: what it renders without models must parse as the wire contract says."""

from __future__ import annotations

import math

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_protocol.aggregate import window_id
from edge_protocol.desired import DesiredDocument, sign_document
from edge_protocol.messages import CLOUD_MESSAGE, AggregateBatch, Reported, SequencedResult, Status
from edge_protocol.specs import HandlerSpec, SubscriptionSpec, WindowSpec
from fleet_simulator.device import Connection, SessionLog
from fleet_simulator.fleet import percentile
from fleet_simulator.messages import (
    RecordTemplate,
    SimSubscription,
    SubscriptionCounters,
    batch_payload,
    check_id,
    device_ids,
    expected_window_id,
    reported_payload,
    status_payload,
)
from fleet_simulator.outbox import SimOutbox
from fleet_simulator.state import Behaviour, DeviceState
from hub.ingest.consumer import _refusal

DEV = "sim-0007"
SUB = SimSubscription.synthetic("sim", 10.0)
OLD, NEW = f"reg/h@sha256:{'a' * 64}", f"reg/h@sha256:{'b' * 64}"


def test_rendered_results_parse_as_the_contract_with_its_window_ids() -> None:
    template = RecordTemplate(DEV, SUB, events=5)
    record = SequencedResult.model_validate_json(template.render(42, 3, 1_700_000_123.456))
    result = record.result
    assert record.seq == 42
    assert result.id == window_id(DEV, "sim", SUB.revision, "g3", 1_700_000_123.456)
    assert result.id == template.window_id(3, 1_700_000_123.456) == expected_window_id(DEV, SUB, 3, 1_700_000_123.456)
    assert (result.group, result.events) == ("g3", 5)
    assert result.window_end - result.window_start == pytest.approx(10.0)
    state = result.fields["value"]
    assert state.count == 5
    assert state.min <= state.mean <= state.max
    assert state.m2 >= 0
    assert math.isclose(state.sum, state.mean * 5, rel_tol=1e-3)
    assert _refusal(DEV, record) is None  # the hub stores it as it is


def test_a_batch_is_an_aggregate_batch_with_records_in_order() -> None:
    template = RecordTemplate(DEV, SUB, events=1)
    payload = batch_payload(DEV, 1234.5, [template.render(seq, seq, 1000.0) for seq in (1, 2, 3)])
    batch = CLOUD_MESSAGE.validate_json(payload)
    assert isinstance(batch, AggregateBatch)
    assert (batch.device, batch.sent_at, [r.seq for r in batch.records]) == (DEV, 1234.5, [1, 2, 3])


def test_status_and_reported_parse() -> None:
    status = CLOUD_MESSAGE.validate_json(status_payload(DEV, False, 99.0))
    assert isinstance(status, Status)
    assert not status.online
    assert status.agent_version == "sim"
    payload = reported_payload(DEV, applied_version=3, handlers=[], ts=5.0, outbox_pending=7, last_refusal=None,
                               subscriptions={"sim": SubscriptionCounters(events=50, windows=2)})  # fmt: skip
    reported = CLOUD_MESSAGE.validate_json(payload)
    assert isinstance(reported, Reported)
    assert (reported.applied_version, reported.outbox_pending) == (3, 7)
    assert reported.subscriptions["sim"].windows_closed == 2


def test_ids_and_subscriptions() -> None:
    assert device_ids("sim", 3) == ["sim-0000", "sim-0001", "sim-0002"]
    assert device_ids("d", 2, first=99_999) == ["d-099999", "d-100000"]  # padded alike: they sort
    with pytest.raises(ValueError, match="device id"):
        check_id('evil"id')
    spec = SubscriptionSpec(name="s", topic="t/#", handler="h", window=WindowSpec(kind="hopping", size=60, hop=10))
    assert SimSubscription.of(spec) == SimSubscription("s", spec.revision, 10.0)
    assert SUB.revision == SubscriptionSpec(name="sim", topic="sim/sim/#", handler="sim").revision


def _signed(key: Ed25519PrivateKey, version: int, image: str = OLD, device: str = DEV) -> bytes:
    doc = DesiredDocument(
        device=device, version=version, issued_at=1.0,
        handlers=[HandlerSpec(name="h", image=image)],
        subscriptions=[SubscriptionSpec(name="s", topic="t/#", handler="h", window=WindowSpec(size=5))],
    )  # fmt: skip
    return sign_document(doc, key).model_dump_json().encode()


def test_desired_state_is_verified_applied_and_reported_like_an_agent() -> None:
    key = Ed25519PrivateKey.generate()
    state = DeviceState(DEV, Behaviour(event_rate=10), key.public_key())
    assert state.on_desired(_signed(key, 2), now=100.0)
    assert state.applied_version == 2
    spec = SubscriptionSpec(name="s", topic="t/#", handler="h", window=WindowSpec(size=5))
    assert state.subscriptions == [SimSubscription("s", spec.revision, 5.0)]
    [report] = state.handler_reports(now=110.0)
    assert (report.image, report.healthy, report.state) == (OLD, True, "running")
    assert (report.processed, report.errors) == (100, 0)
    assert not state.on_desired(_signed(key, 2), now=111.0)  # the retained copy again: a no-op
    assert state.on_desired(_signed(key, 1), now=112.0)
    assert str(state.last_refusal).startswith("stale-version")
    assert state.on_desired(_signed(Ed25519PrivateKey.generate(), 3), now=113.0)
    assert str(state.last_refusal).startswith("bad-signature")
    assert state.applied_version == 2
    assert state.on_desired(_signed(key, 4, image="reg/h:1.0"), now=114.0)
    assert str(state.last_refusal).startswith("image-not-admitted")
    assert state.refusals == 3
    assert state.on_desired(_signed(key, 5, image=NEW), now=120.0)
    [report] = state.handler_reports(now=121.0)
    assert (report.image, report.processed) == (NEW, 10)  # a new image is a new runtime


def test_broken_images_are_refused_or_fail_their_events() -> None:
    key = Ed25519PrivateKey.generate()
    refuse = DeviceState(DEV, Behaviour(broken="*:sha256:b*"), key.public_key())
    refuse.on_desired(_signed(key, 1), now=0.0)
    refuse.on_desired(_signed(key, 2, image=NEW), now=1.0)
    [report] = refuse.handler_reports(now=2.0)
    assert (refuse.applied_version, report.image, report.update_failed_image) == (2, NEW, None)  # pattern misses
    refuse = DeviceState(DEV, Behaviour(broken="*sha256:b*"), key.public_key())
    refuse.on_desired(_signed(key, 1), now=0.0)
    refuse.on_desired(_signed(key, 2, image=NEW), now=1.0)
    [report] = refuse.handler_reports(now=2.0)
    assert (refuse.applied_version, report.image, report.healthy, report.update_failed_image) == (2, OLD, True, NEW)
    assert report.update_error is not None
    errors = DeviceState(DEV, Behaviour(broken="*sha256:b*", broken_mode="errors", event_rate=10), None)
    assert errors.on_desired(_signed(key, 1, image=NEW), now=0.0)  # no key given: trusted as it comes
    [report] = errors.handler_reports(now=10.0)
    assert (report.image, report.processed, report.errors) == (NEW, 50, 50)


def test_outbox_sends_batches_resends_the_unacked_and_renders_again() -> None:
    box = SimOutbox(batch=3, max_unacked=4, resend_after=15.0)
    template = RecordTemplate(DEV, SUB, events=1)
    box.add_window(template, 1000.0, 2)
    box.add_window(template, 1010.0, 3)
    seqs, first = box.take()
    assert (seqs, first) == ([1, 2, 3], True)
    assert [SequencedResult.model_validate_json(b).result.group for b in box.render(seqs)] == ["g0", "g1", "g0"]
    assert box.window_ids([3]) == [template.window_id(0, 1010.0)]
    box.sent(seqs, now=0.0)
    assert box.take() == ([4], True)  # max_unacked: one more
    box.sent([4], now=1.0)
    assert box.take() == ([], True)
    assert box.ack([(1, 2)], now=0.5) == [0.5, 0.5]
    assert (box.acked, box.pending, box.resend_due_in(now=5.0)) == (2, 3, 10.0)
    assert box.requeue() == 2
    assert box.resent == 2
    assert box.ack([(4, 4)], now=2.0) == [1.0]
    assert box.take() == ([3], False)  # 4 was acked meanwhile: not sent again
    box.sent([3], now=3.0)
    assert box.take() == ([5], True)


def test_percentile() -> None:
    assert percentile([], 99) is None
    assert percentile(range(1, 101), 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_the_ledger_names_every_record_made_and_acked_through_follows_the_acks() -> None:
    box = SimOutbox(batch=10, max_unacked=100)
    template = RecordTemplate(DEV, SUB, events=4)
    box.add_window(template, 1000.0, 2)
    box.add_window(template, 1010.0, 2)
    seqs, _ = box.take()
    box.sent(seqs, now=0.0)
    assert box.acked_through == 0
    box.ack([(2, 3)], now=1.0)
    assert box.acked_through == 0  # 1 still waits
    box.ack([(1, 1)], now=1.0)
    assert box.acked_through == 3
    box.add_window(template, 1020.0, 2)  # 5 and 6, not sent yet
    box.ack([(4, 4)], now=2.0)
    assert box.acked_through == 4
    box.add_window(template, 1030.0, 1)  # trims the outbox of acknowledged windows; the ledger keeps them
    assert box.window_ids([7]) == [template.window_id(0, 1030.0)]
    made = [(seq, wid) for seq, wid, _events in box.ledger.records()]
    assert made == [
        (1, template.window_id(0, 1000.0)), (2, template.window_id(1, 1000.0)),
        (3, template.window_id(0, 1010.0)), (4, template.window_id(1, 1010.0)),
        (5, template.window_id(0, 1020.0)), (6, template.window_id(1, 1020.0)),
        (7, template.window_id(0, 1030.0)),
    ]  # fmt: skip
    assert [seq for seq, _, events in box.ledger.records(through=3) if events == 4] == [1, 2, 3]


def test_the_session_log_times_each_connection_from_its_backoff() -> None:
    log = SessionLog()
    log.attempt(10.0)  # the first: no backoff before it
    log.connected(10.2)
    log.lost(20.0)
    log.scheduled(20.4)  # backoff: the next attempt at 20.4
    log.attempt(20.5)  # refused
    log.scheduled(21.3)
    log.attempt(21.4)
    log.connected(21.6)
    assert log.connections == [Connection(10.0, 10.0, 10.2, 1), Connection(21.3, 21.4, 21.6, 2)]
    assert (log.attempts, log.losses) == (3, [20.0])
