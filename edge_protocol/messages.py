"""Messages on the cloud broker between agents and the hub (see docs/architecture.md for the topic table)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from edge_protocol import PROTOCOL_VERSION
from edge_protocol.aggregate import WindowResult
from edge_protocol.base import WireModel


class SequencedResult(WireModel):
    """A window result with the agent's outbox sequence number."""

    seq: int = Field(ge=1)
    result: WindowResult


class AggregateBatch(WireModel):
    """agent -> hub: window results taken from the outbox, oldest first."""

    kind: Literal["aggregates"] = "aggregates"
    v: int = PROTOCOL_VERSION
    device: str
    sent_at: float
    records: list[SequencedResult] = Field(min_length=1)


class Ack(WireModel):
    """hub -> agent: the outbox sequences the hub has durably stored (inclusive ranges)."""

    kind: Literal["ack"] = "ack"
    v: int = PROTOCOL_VERSION
    device: str
    ranges: list[tuple[int, int]] = Field(min_length=1)

    def covers(self, seq: int) -> bool:
        return any(lo <= seq <= hi for lo, hi in self.ranges)


class Status(WireModel):
    """agent -> hub, retained, also the MQTT will (``online=False``)."""

    kind: Literal["status"] = "status"
    v: int = PROTOCOL_VERSION
    device: str
    online: bool
    agent_version: str = ""
    ts: float


CloudMessage = Annotated[AggregateBatch | Ack | Status, Field(discriminator="kind")]
CLOUD_MESSAGE: TypeAdapter[AggregateBatch | Ack | Status] = TypeAdapter(CloudMessage)


def ranges_of(seqs: list[int]) -> list[tuple[int, int]]:
    """Collapse sequence numbers into sorted inclusive ranges: [1,2,3,7] -> [(1,3),(7,7)]."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out
