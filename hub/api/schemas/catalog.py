"""JSON shapes of the hub API for handlers, subscriptions and desired state (server and client alike).

Request bodies embed the shared specs from ``edge_protocol.specs`` unchanged, so every option the agent
understands can be set from the hub, and a spec the agent would refuse is refused here, with its field path.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_protocol.desired import DesiredDocument
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from hub.fleet.labels import Selector


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SubscriptionIn(BaseModel):
    """Body of ``POST /v1/subscriptions``: which devices (a label selector) and the spec they run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: list[str] = Field(default_factory=list, description="label terms k=v that must all match; [] = all")
    spec: SubscriptionSpec

    @field_validator("target")
    @classmethod
    def _target(cls, value: list[str]) -> list[str]:
        return [f"{key}={val}" for key, val in Selector.parse(value).terms]  # LabelError is a ValueError

    @property
    def selector(self) -> Selector:
        return Selector.parse(self.target)


class HandlerOut(_Out):
    name: str
    spec: HandlerSpec
    updated_at: float
    used_by: list[str] = Field(default_factory=list, description="subscriptions that run this handler")


class SubscriptionOut(_Out):
    name: str
    target: list[str] = Field(description="label terms k=v; [] = every device")
    spec: SubscriptionSpec
    updated_at: float


class VersionOut(_Out):
    device: str
    version: int


class ChangeOut(_Out):
    """What a change did: the handler or subscription concerned, and the desired-state versions it made."""

    action: Literal["created", "replaced", "removed"]
    handler: HandlerOut | None = None
    subscription: SubscriptionOut | None = None
    desired: list[VersionOut] = Field(default_factory=list, description="devices given a new desired-state version")


class DesiredOut(_Out):
    """A device's current desired state as the hub signed it."""

    device: str
    version: int
    content_hash: str
    created_at: float
    published_at: float | None = Field(description="when the broker acknowledged it; None: not yet")
    key_id: str = Field(description="the signing key's id (see `hub keys init`)")
    document: DesiredDocument
