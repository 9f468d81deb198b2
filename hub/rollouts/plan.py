"""Rollouts as a state machine: the plan, each device's gate and the rollout's transitions. Pure: no I/O, no clock.

A rollout moves one handler to a release step by step: the canary devices, then batches. A step's devices are
assigned the release together; each must then report the handler running the release's image, healthy, at a
desired version that includes the assignment, and then soak: for ``soak`` seconds (and at least one report
later) its error rate (Δerrors / max(1, Δprocessed + Δerrors) from the cumulative counters) and its largest
reported lag stay within the limits. A refused update, a health timeout, a handler that stops running the
release during the soak, or a limit exceeded halts the rollout: the step's devices go back to their previous
release and later steps are never touched. When every step passed, the release becomes the stable one.

No data is not healthy: a device that handled fewer than ``min_events`` events (ok or not) since its soak began
reads "no data" (still soaking: neither passed nor failed). Its soak runs on until enough events arrive, for
at most ``health_timeout`` more; a device still without data then fails its gate ("no data"), like a device
that never reports. An error rate over 0 events proves nothing, and a release that silently stopped taking
events (a wrong subscription, a handler that never answers) must not pass for a good one.

``advance`` is one tick of the controller; the store applies what it returns under a compare-and-set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from fractions import Fraction

from edge_protocol.durations import format_duration
from edge_protocol.messages import HandlerReport, Reported


class State(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    ABORTED = "aborted"
    COMPLETED = "completed"
    UNDONE = "undone"


ACTIVE = frozenset({State.RUNNING, State.PAUSED})


class DeviceStatus(StrEnum):
    PENDING = "pending"  # its step has not started
    ASSIGNED = "assigned"  # on the new release, waiting for a healthy report
    SOAKING = "soaking"  # healthy; counting errors and lag
    PASSED = "passed"
    FAILED = "failed"  # failed its gate; put back on its previous release
    REVERTED = "reverted"  # its step halted because of another device; put back
    HELD = "held"  # outside the plan: kept on the old release when the new one became stable
    UNDONE = "undone"  # put back by an undo


ON_NEW_RELEASE = frozenset({DeviceStatus.ASSIGNED, DeviceStatus.SOAKING, DeviceStatus.PASSED})
_BATCH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True, slots=True)
class Limits:
    """What a rollout was started with (the API's defaults are here)."""

    canary: int = 1
    batch: str = "25%"
    soak: float = 30.0
    max_error_rate: float = 0.05
    max_lag_ms: float = 1000.0
    health_timeout: float = 120.0
    min_events: int = 10
    """Events a device must handle during its soak for its error rate to count; fewer is "no data"."""


NO_DATA = "no data"
"""The gate's reading, and the start of the reason, of a soaking device with fewer than ``min_events``."""


def no_data(status: DeviceStatus, reason: str | None) -> bool:
    """Whether a device's gate reads "no data": soaking without enough events, or failed for want of them."""
    return status in (DeviceStatus.SOAKING, DeviceStatus.FAILED) and (reason or "").startswith(NO_DATA)


def batch_size(batch: str | int, total: int) -> int:
    """Devices per batch: a count as is, ``"25%"`` of ``total`` rounded up, at least 1. ValueError if neither."""
    text = str(batch).strip()
    if text.isdigit():
        if int(text) < 1:
            raise ValueError("batch: at least 1 device")
        return int(text)
    match = _BATCH.match(text)
    if match is None or not 0 < float(match.group(1)) <= 100:
        raise ValueError(f"batch {batch!r}: write a number of devices (2) or a percentage up to 100% (25%)")
    return max(1, math.ceil(Fraction(match.group(1)) * total / 100))  # exact: 10% of 30 is 3, not 4


def plan(devices: Sequence[str], canary: int, batch: str | int) -> list[list[str]]:
    """Steps: the first ``canary`` devices (by id), then batches of ``batch`` (of all devices, not the rest)."""
    ordered = sorted(set(devices))
    size = batch_size(batch, len(ordered))
    steps = [ordered[:canary]] if canary > 0 and ordered else []
    rest = ordered[canary:] if canary > 0 else ordered
    steps += [rest[i : i + size] for i in range(0, len(rest), size)]
    return steps


@dataclass(frozen=True, slots=True)
class Progress:
    """One device's progress in a rollout (a row of ``rollout_devices``)."""

    device: str
    step: int
    status: DeviceStatus = DeviceStatus.PENDING
    desired_version: int | None = None
    assigned_at: float | None = None
    healthy_at: float | None = None
    soak_started_at: float | None = None
    soak_processed: int | None = None
    soak_errors: int | None = None
    soak_reports: int = 0
    soak_seen_at: float | None = None
    max_lag_ms: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """What the hub knows of a device now: its newest reported state, when it arrived, online or not."""

    reported: Reported | None = None
    received_at: float | None = None
    online: bool = True


@dataclass(frozen=True, slots=True)
class RolloutView:
    id: int
    handler: str
    image: str
    state: State
    step: int
    steps: list[list[str]]
    limits: Limits
    row_version: int


@dataclass(frozen=True, slots=True)
class Transition:
    """What one tick changes: the rollout's state and step, device rows, assignments to make or undo."""

    state: State
    step: int
    reason: str | None = None
    devices: dict[str, Progress] = field(default_factory=dict)
    assign: tuple[str, ...] = ()
    revert: tuple[str, ...] = ()
    complete: bool = False


def advance(  # noqa: PLR0911 - one return per outcome reads best here
    view: RolloutView, progress: Mapping[str, Progress], seen: Mapping[str, Observation], now: float
) -> Transition | None:
    """One controller tick of a running rollout; None when nothing changes."""
    if view.state is not State.RUNNING:
        return None
    if view.step >= len(view.steps):
        return Transition(State.COMPLETED, view.step, complete=True)
    members = [progress[d] for d in view.steps[view.step]]
    pending = [p.device for p in members if p.status is DeviceStatus.PENDING]
    if pending:
        assigned = {d: replace(progress[d], status=DeviceStatus.ASSIGNED, assigned_at=now) for d in pending}
        return Transition(State.RUNNING, view.step, devices=assigned, assign=tuple(pending))
    changed = {}
    for p in members:
        after = gate(p, seen.get(p.device, Observation()), view.handler, view.image, view.limits, now)
        if after != p:
            changed[p.device] = after
    current = [changed.get(p.device, p) for p in members]
    failed = [p for p in current if p.status is DeviceStatus.FAILED]
    if failed:
        first = failed[0]
        for p in current:
            if p.status is not DeviceStatus.FAILED:
                why = f"step halted: {first.device} failed"
                changed[p.device] = replace(p, status=DeviceStatus.REVERTED, reason=why)
        reason = f"step {view.step + 1}: {first.device}: {first.reason}"
        return Transition(State.HALTED, view.step, reason, changed, revert=tuple(p.device for p in current))
    if all(p.status is DeviceStatus.PASSED for p in current):
        step = view.step + 1
        if step >= len(view.steps):
            return Transition(State.COMPLETED, step, devices=changed, complete=True)
        return Transition(State.RUNNING, step, devices=changed)
    return Transition(State.RUNNING, view.step, devices=changed) if changed else None


def gate(p: Progress, seen: Observation, handler: str, image: str, limits: Limits, now: float) -> Progress:
    """A device's progress after looking at what it reports now."""
    if p.status not in (DeviceStatus.ASSIGNED, DeviceStatus.SOAKING):
        return p
    rep = seen.reported
    report = next((h for h in rep.handlers if h.name == handler), None) if rep is not None else None
    # Only a report from a desired version that includes the assignment counts (an older one predates it).
    current = (
        rep is not None
        and p.desired_version is not None
        and rep.applied_version is not None
        and rep.applied_version >= p.desired_version
    )
    if current and report is not None and report.update_failed_image == image:
        return _fail(p, f"update refused: {report.update_error or 'no reason reported'}")
    # Desired state is all-or-nothing: a refused version leaves applied_version behind, and says so itself.
    refused = rep.desired_refused if rep is not None else None
    if refused is not None and p.desired_version is not None and refused.version >= p.desired_version:
        return _fail(p, f"update refused at step {refused.step}: handler {refused.handler}: {refused.reason}")
    running = report if current and _runs(report, image) else None
    if p.status is DeviceStatus.ASSIGNED:
        return _wait_healthy(p, seen, report, running, limits, now)
    if running is None:
        return _fail(p, f"stopped running the new release during the soak: {describe(p, seen, report)}")
    return _soak(p, seen, running, limits, now)


def _wait_healthy(
    p: Progress, seen: Observation, report: HandlerReport | None, running: HandlerReport | None, limits: Limits,
    now: float,
) -> Progress:  # fmt: skip
    if running is not None:
        return replace(
            p,
            status=DeviceStatus.SOAKING,
            healthy_at=now,
            soak_started_at=now,
            soak_processed=running.processed,
            soak_errors=running.errors,
            soak_reports=0,
            soak_seen_at=seen.received_at,
            max_lag_ms=None,
            reason=None,
        )
    if p.assigned_at is not None and now - p.assigned_at > limits.health_timeout:
        wait = format_duration(limits.health_timeout)
        return _fail(p, f"not healthy on the new release within {wait}: {describe(p, seen, report)}")
    return p


def _soak(p: Progress, seen: Observation, report: HandlerReport, limits: Limits, now: float) -> Progress:
    if seen.received_at is not None and (p.soak_seen_at is None or seen.received_at > p.soak_seen_at):
        lag = p.max_lag_ms if report.lag_ms is None else max(p.max_lag_ms or 0.0, report.lag_ms)
        p = replace(p, soak_reports=p.soak_reports + 1, soak_seen_at=seen.received_at, max_lag_ms=lag)
    if p.max_lag_ms is not None and p.max_lag_ms > limits.max_lag_ms:
        return _fail(p, f"lag {p.max_lag_ms:.0f} ms over the limit of {limits.max_lag_ms:.0f} ms")
    soaked = now - (p.soak_started_at if p.soak_started_at is not None else now)
    overdue = soaked > limits.soak + limits.health_timeout
    if soaked < limits.soak or p.soak_reports == 0:
        if p.soak_reports == 0 and overdue:
            return _fail(p, f"no report during the soak of {format_duration(limits.soak)}")
        return p
    return _judge(p, report, limits, overdue=overdue)


def _judge(p: Progress, report: HandlerReport, limits: Limits, *, overdue: bool) -> Progress:
    """The end of a soak: passed or failed on the counts, or still "no data" (failed once ``overdue``)."""
    processed, errors = deltas(p, report)
    counts = f"{errors} errors, {processed} ok"
    if processed + errors < limits.min_events:
        why = f"{NO_DATA}: {processed + errors} of {limits.min_events} events needed ({counts})"
        if overdue:
            return _fail(p, f"{why} within {format_duration(limits.soak + limits.health_timeout)} of becoming healthy")
        return p if p.reason == why else replace(p, reason=why)
    rate = error_rate(processed, errors)
    if rate > limits.max_error_rate:
        return _fail(p, f"error rate {rate:.1%} over the limit of {limits.max_error_rate:.1%} ({counts})")
    worst = "no lag reported" if p.max_lag_ms is None else f"max lag {p.max_lag_ms:.0f} ms"
    return replace(p, status=DeviceStatus.PASSED, reason=f"error rate {rate:.1%} ({counts}), {worst}")


def deltas(p: Progress, report: HandlerReport) -> tuple[int, int]:
    """(Δprocessed, Δerrors) since the soak began; counters that went back (a new runtime) count from zero."""
    base_processed, base_errors = p.soak_processed or 0, p.soak_errors or 0
    if report.processed < base_processed or report.errors < base_errors:
        return report.processed, report.errors
    return report.processed - base_processed, report.errors - base_errors


def error_rate(processed: int, errors: int) -> float:
    return errors / max(1, processed + errors)


def describe(p: Progress, seen: Observation, report: HandlerReport | None) -> str:
    """Why a device does not pass yet, for a person."""
    rep = seen.reported
    if rep is None:
        return "it has not reported" + ("" if seen.online else " (offline)")
    where = "" if seen.online else "offline; "
    if p.desired_version is not None and (rep.applied_version or 0) < p.desired_version:
        return f"{where}applied version {rep.applied_version}, waiting for {p.desired_version}"
    if report is None:
        return f"{where}the handler is not in its report"
    health = "healthy" if report.healthy else "unhealthy"
    return f"{where}runs {report.image}, {report.state}, {health}"


def _runs(report: HandlerReport | None, image: str) -> bool:
    return report is not None and report.image == image and report.healthy and report.state == "running"


def _fail(p: Progress, reason: str) -> Progress:
    return replace(p, status=DeviceStatus.FAILED, reason=reason)
