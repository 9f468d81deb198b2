"""The rollout gate and the agent's all-or-nothing desired state: a refused version leaves applied_version on the
previous one, so the gate reads the refusal itself (version, step, reason) and fails the device at once."""

from __future__ import annotations

from edge_protocol.messages import DesiredRefusal, HandlerReport, Reported
from hub.rollouts.plan import DeviceStatus, Limits, Observation, Progress, gate

NEW, OLD = "repo@sha256:" + "b" * 64, "repo@sha256:" + "a" * 64


def _seen(refused_version: int | None) -> Observation:
    refused = None
    if refused_version is not None:
        refused = DesiredRefusal(version=refused_version, step="pull", handler="h", image=NEW, reason="layer corrupt")
    rep = Reported(
        device="d", applied_version=4, handlers=[HandlerReport(name="h", image=OLD, healthy=True)],
        desired_refused=refused, ts=0.0,
    )
    return Observation(reported=rep, received_at=1.0)


def test_a_refusal_of_the_assigned_version_fails_the_device() -> None:
    p = Progress(device="d", step=0, status=DeviceStatus.ASSIGNED, desired_version=5, assigned_at=0.0)
    after = gate(p, _seen(5), "h", NEW, Limits(), now=1.0)
    assert after.status is DeviceStatus.FAILED
    assert after.reason == "update refused at step pull: handler h: layer corrupt"


def test_an_older_refusal_does_not_count() -> None:
    p = Progress(device="d", step=0, status=DeviceStatus.ASSIGNED, desired_version=5, assigned_at=0.0)
    assert gate(p, _seen(3), "h", NEW, Limits(), now=1.0).status is DeviceStatus.ASSIGNED
    assert gate(p, _seen(None), "h", NEW, Limits(), now=1.0).status is DeviceStatus.ASSIGNED
