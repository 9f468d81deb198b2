"""JSON shapes of the hub API for releases and rollouts (server and client alike)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from edge_protocol.durations import Duration
from hub.api.schemas.catalog import VersionOut
from hub.desired.image_registry import DIGEST
from hub.desired.versions import check_version
from hub.fleet.labels import Selector
from hub.rollouts.plan import DeviceStatus, Limits, State, batch_size, no_data

_DEFAULTS = Limits()


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ReleaseIn(_In):
    """Body of ``POST /v1/handlers/{name}/releases``: a version and either a registry image or a local image id."""

    version: str
    image: str | None = Field(default=None, description="host:port/repo:tag (resolved to its digest) or repo@sha256:")
    local_id: str | None = Field(default=None, description="sha256:... of an image that was never pushed")

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        return check_version(value)

    @field_validator("local_id")
    @classmethod
    def _local_id(cls, value: str | None) -> str | None:
        if value is not None and not DIGEST.match(value):
            raise ValueError("a local image id is sha256: and 64 lowercase hex digits (docker image inspect)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ReleaseIn:
        if (self.image is None) == (self.local_id is None):
            raise ValueError("give either image or local_id")
        return self


class ReleaseOut(_Out):
    handler: str
    version: str
    image: str = Field(description="what devices are told to run: repo@sha256:..., or a local image id")
    source: str = Field(description="what the operator named (a tag before resolution, or 'local')")
    created_at: float
    stable: bool = Field(description="the release devices run unless a rollout assigned them another")


class RolloutIn(_In):
    """Body of ``POST /v1/rollouts``."""

    handler: str
    release: str = Field(description="the release version to roll out")
    target: list[str] = Field(default_factory=list, description="label terms k=v; [] = every device running it")
    canary: int = Field(default=_DEFAULTS.canary, ge=0, description="devices in the first step")
    batch: str | int = Field(default=_DEFAULTS.batch, description="devices per later step: a count, or '25%'")
    soak: Duration = Field(default=_DEFAULTS.soak, description="how long each device is watched once healthy")
    max_error_rate: float = Field(default=_DEFAULTS.max_error_rate, ge=0, le=1)
    max_lag_ms: float = Field(default=_DEFAULTS.max_lag_ms, ge=0)
    health_timeout: Duration = Field(default=_DEFAULTS.health_timeout, gt=0, description="to report healthy")
    min_events: int = Field(
        default=_DEFAULTS.min_events, ge=0,
        description="events each device must handle during its soak; fewer is 'no data', a failure once the soak "
        "has waited health_timeout more (0: judge on any count)",
    )  # fmt: skip

    @field_validator("target")
    @classmethod
    def _target(cls, value: list[str]) -> list[str]:
        return [f"{key}={val}" for key, val in Selector.parse(value).terms]

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: str | int) -> str:
        batch_size(value, 100)  # ValueError says how to write it
        return str(value).strip()

    @property
    def limits(self) -> Limits:
        return Limits(
            canary=self.canary,
            batch=str(self.batch),
            soak=self.soak,
            max_error_rate=self.max_error_rate,
            max_lag_ms=self.max_lag_ms,
            health_timeout=self.health_timeout,
            min_events=self.min_events,
        )


class DeviceProgressOut(_Out):
    device: str
    step: int = Field(description="1-based step; 0: outside the plan (held on the previous release)")
    status: DeviceStatus
    desired_version: int | None = Field(description="the version compiled after its last assignment change")
    assigned_at: float | None = None
    healthy_at: float | None = None
    soak_started_at: float | None = None
    soak_reports: int = 0
    max_lag_ms: float | None = None
    reason: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def no_data(self) -> bool:
        """The gate reads "no data": too few events during the soak (still waiting, or failed for it)."""
        return no_data(self.status, self.reason)


class RolloutOut(_Out):
    id: int
    handler: str
    release: str
    image: str
    previous_release: str
    previous_image: str
    target: list[str]
    canary: int
    batch: str
    soak: Duration
    max_error_rate: float
    max_lag_ms: float
    health_timeout: Duration
    min_events: int = _DEFAULTS.min_events
    state: State
    step: int = Field(description="the current step, 1-based (steps + 1 once completed)")
    steps: list[list[str]]
    passed: int = Field(description="devices of the plan that passed their gate")
    planned: int
    reason: str | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    devices: list[DeviceProgressOut]
    desired: list[VersionOut] = Field(default_factory=list, description="versions this request compiled")
