"""What the fleet simulator's virtual devices say: window results, batches, status, reported state.

Pure (no I/O, no clock: times are passed in). Window results are rendered straight to JSON bytes from a
per-device template instead of being built as models, so one process can offer tens of thousands of results
per second; unit tests check that every rendered message parses as the wire contract's model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge_protocol import PROTOCOL_VERSION
from edge_protocol.aggregate import window_id
from edge_protocol.messages import HandlerReport, Reported, Status, SubscriptionReport
from edge_protocol.specs import SubscriptionSpec, WindowSpec

AGENT_VERSION = "sim"
STATS = ("count", "sum", "min", "max", "mean")
FIELD = "value"
# Ids are put in JSON and topics without escaping: keep them to characters that need none.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_id(value: str, what: str = "device id") -> str:
    """``value`` if it is safe as a device id, subscription name or revision in topics and JSON; else ValueError."""
    if not _SAFE_ID.match(value):
        raise ValueError(f"{what} {value!r}: use letters, digits, '_', '.' and '-' (at most 128)")
    return value


def device_ids(prefix: str, count: int, first: int = 0) -> list[str]:
    """``sim-0000``, ``sim-0001``, ...: zero-padded so that ids sort in creation order."""
    width = max(4, len(str(first + count - 1)))
    return [check_id(f"{prefix}-{n:0{width}d}") for n in range(first, first + count)]


@dataclass(frozen=True, slots=True)
class SimSubscription:
    """One subscription a virtual device produces windows for; ``every`` is the time between two closes."""

    name: str
    revision: str
    every: float

    @classmethod
    def synthetic(cls, name: str, window: float) -> SimSubscription:
        """The stream of a device without desired state: a tumbling window of ``window`` seconds."""
        spec = SubscriptionSpec(name=name, topic=f"sim/{name}/#", handler="sim", window=WindowSpec(size=window))
        return cls(spec.name, spec.revision, window)

    @classmethod
    def of(cls, spec: SubscriptionSpec) -> SimSubscription:
        """A subscription from desired state: windows close every size (tumbling), hop, or gap (session)."""
        window = spec.window
        every = window.hop if window.kind == "hopping" and window.hop else window.size
        if window.kind == "session" and window.gap:
            every = window.gap
        return cls(check_id(spec.name, "subscription"), spec.revision, every)


class RecordTemplate:
    """Renders one device's results of one subscription as ``SequencedResult`` JSON, by sequence and group.

    The same (seq, group, window) always gives the same bytes, so a resend is a re-render, not a stored copy.
    Each result has ``events`` events and one field, ``value``, whose statistics vary with group and window.
    """

    __slots__ = ("_format", "_head", "events", "sub")

    def __init__(self, device: str, sub: SimSubscription, events: int) -> None:
        check_id(device)
        check_id(sub.revision, "revision")
        self.sub = sub
        self.events = max(1, events)
        self._head = f"{device}/{sub.name}@{sub.revision}/"
        stats = ",".join(f'"{s}"' for s in STATS)
        self._format = (
            '{"seq":%d,"result":{"id":"' + self._head + 'g%d/%.3f/0","subscription":"' + sub.name + '","revision":"'
            + sub.revision + '","group":"g%d","window_start":%.3f,"window_end":%.3f,"part":0,"events":'
            + str(self.events) + ',"fields":{"' + FIELD + '":{"count":' + str(self.events)
            + ',"sum":%.3f,"mean":%.3f,"m2":%.3f,"min":%.3f,"max":%.3f,"first":%.3f,"first_ts":%.3f,'
            '"last":%.3f,"last_ts":%.3f}},"stats":[' + stats + "]}}"
        )  # fmt: skip

    def window_id(self, group: int, window_start: float) -> str:
        """The id :func:`edge_protocol.aggregate.window_id` gives this result."""
        return f"{self._head}g{group}/{window_start:.3f}/0"

    def render(self, seq: int, group: int, window_start: float) -> bytes:
        n = self.events
        mean = 20.0 + group % 10 + int(window_start) % 7 * 0.1
        end = window_start + self.sub.every
        return (
            self._format
            % (
                seq, group, window_start, group, window_start, end,
                n * mean, mean, n * 0.25, mean - 1.0, mean + 1.0, mean - 0.5, window_start, mean + 0.5, end,
            )
        ).encode()  # fmt: skip


def expected_window_id(device: str, sub: SimSubscription, group: int, window_start: float) -> str:
    """The contract's own spelling of a simulated window id (for tests and checks)."""
    return window_id(device, sub.name, sub.revision, f"g{group}", window_start)


def batch_payload(device: str, sent_at: float, records: Sequence[bytes]) -> bytes:
    """An ``AggregateBatch`` of rendered records, oldest first."""
    head = b'{"kind":"aggregates","v":%d,"device":"%s","sent_at":%.6f,"records":[' % (
        PROTOCOL_VERSION,
        device.encode(),
        sent_at,
    )
    return head + b",".join(records) + b"]}"


def status_payload(device: str, online: bool, ts: float) -> bytes:
    """Retained ``Status``; the offline one is also the MQTT will (``ts``: the connect time)."""
    return Status(device=device, online=online, agent_version=AGENT_VERSION, ts=ts).model_dump_json().encode()


@dataclass(frozen=True, slots=True)
class SubscriptionCounters:
    """What a virtual device counts per subscription since it started."""

    events: int = 0
    windows: int = 0


def reported_payload(
    device: str,
    *,
    applied_version: int | None,
    handlers: Sequence[HandlerReport],
    subscriptions: Mapping[str, SubscriptionCounters],
    outbox_pending: int,
    last_refusal: str | None,
    ts: float,
) -> bytes:
    """Retained ``Reported``: handlers as the applied desired state lists them, counters that advance."""
    subs = {
        name: SubscriptionReport(received=c.events, processed=c.events, windows_closed=c.windows)
        for name, c in subscriptions.items()
    }
    reported = Reported(
        device=device,
        agent_version=AGENT_VERSION,
        applied_version=applied_version,
        handlers=list(handlers),
        subscriptions=subs,
        outbox_pending=outbox_pending,
        last_refusal=last_refusal,
        ts=ts,
    )
    return reported.model_dump_json().encode()
