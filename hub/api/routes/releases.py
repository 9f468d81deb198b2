"""API routes of releases (``/v1/handlers/{name}/releases``) and rollouts (``/v1/rollouts``).

A release's image is resolved to its registry digest here, by the hub, so every replica and every device sees
the same bytes whatever the tag points to later. Rollouts are started here and moved along by the controller
(:mod:`hub.rollouts.controller`); pause, resume, abort and undo are compare-and-set changes like its own.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

import asyncio
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from hub.api.routes.catalog import NO_KEY
from hub.api.schemas.catalog import VersionOut
from hub.api.schemas.rollouts import DeviceProgressOut, ReleaseIn, ReleaseOut, RolloutIn, RolloutOut
from hub.db.store import Store
from hub.desired.image_registry import DigestResolver
from hub.desired.publisher import DesiredPublisher
from hub.desired.releases import Release, Releases
from hub.errors import Conflict, Unprocessable
from hub.fleet.labels import Selector
from hub.rollouts.controller import RolloutController
from hub.rollouts.plan import DeviceStatus, Progress
from hub.rollouts.store import RolloutRecord, RolloutStore

Command = Literal["pause", "resume", "abort", "undo"]


def releases_router(
    store: Store, desired: DesiredPublisher | None, clock: Callable[[], float], resolver: DigestResolver
) -> APIRouter:
    router = APIRouter()
    releases = Releases(store, clock=clock)
    rollouts = RolloutStore(store, clock=clock)

    def controller() -> RolloutController:
        if desired is None:
            raise Conflict(NO_KEY)
        return RolloutController(store, desired, clock=clock)

    # -- releases --------------------------------------------------------------------------------------------

    @router.get("/handlers/{name}/releases", tags=["releases"])
    async def list_releases(name: str) -> list[ReleaseOut]:
        """The handler's releases, oldest first; ``stable`` marks the one devices run by default."""
        return [_release_out(r) for r in await asyncio.to_thread(releases.list, name)]

    @router.post("/handlers/{name}/releases", tags=["releases"], status_code=201)
    async def add_release(name: str, body: ReleaseIn) -> ReleaseOut:
        """Record a release: ``image`` by tag is resolved to its digest in the registry (502 when the registry
        cannot say), by digest is taken as is; ``local_id`` is an image id never pushed to a registry."""
        if body.local_id is not None:
            image, source = body.local_id, "local"
        else:
            assert body.image is not None
            image, source = await resolver.resolve(body.image), body.image
        return _release_out(await asyncio.to_thread(releases.add, name, body.version, image, source))

    # -- rollouts --------------------------------------------------------------------------------------------

    @router.get("/rollouts", tags=["rollouts"])
    async def list_rollouts(
        handler: Annotated[str | None, Query(description="only rollouts of this handler")] = None,
    ) -> list[RolloutOut]:
        """Every rollout, newest first."""
        return [_rollout_out(r) for r in await asyncio.to_thread(rollouts.all, handler)]

    @router.post("/rollouts", tags=["rollouts"], status_code=201)
    async def start_rollout(body: RolloutIn) -> RolloutOut:
        """Plan a rollout of a release to the devices matching ``target`` that run the handler (by id): the
        ``canary`` first, then batches. The controller assigns the first step at its next tick (about 1 s)."""
        controller()
        try:
            target = Selector.parse(body.target)
        except ValueError as exc:
            raise Unprocessable(f"target: {exc}") from exc
        record = await asyncio.to_thread(rollouts.create, body.handler, body.release, target, body.limits)
        return _rollout_out(record)

    @router.get("/rollouts/{rollout_id}", tags=["rollouts"])
    async def get_rollout(rollout_id: int) -> RolloutOut:
        """One rollout: its state, step, and every device's progress and reason."""
        return _rollout_out(await asyncio.to_thread(rollouts.get, rollout_id))

    @router.post("/rollouts/{rollout_id}/{command}", tags=["rollouts"])
    async def control_rollout(rollout_id: int, command: Command) -> RolloutOut:
        """``pause`` (no more steps; devices stay), ``resume`` (the current step's waits start over), ``abort``
        (stop for good; devices stay where they are) or ``undo`` (every device the rollout moved goes back to
        its previous release, with a new desired version; a completed rollout's stable release too)."""
        ctl = controller()
        done = await asyncio.to_thread(ctl.changes.control, rollout_id, command)
        made = await desired.changed(done.recompile) if desired is not None and done.recompile else []
        before = {p.device: p.desired_version for p in done.rollout.devices}
        await ctl.compile_pending(rollout_id)
        record = await asyncio.to_thread(rollouts.get, rollout_id)
        versions = {v.device: v.version for v in made}
        versions.update({p.device: p.desired_version for p in record.devices
                         if p.desired_version is not None and p.desired_version != before.get(p.device)})  # fmt: skip
        return _rollout_out(record, [VersionOut(device=d, version=v) for d, v in sorted(versions.items())])

    return router


# Records to JSON shapes: here, beside their routes, so that the schemas (shared with the CLI) import no storage.


def _release_out(release: Release) -> ReleaseOut:
    return ReleaseOut(
        handler=release.handler,
        version=release.version,
        image=release.image,
        source=release.source,
        created_at=release.created_at,
        stable=release.stable,
    )


def _progress_out(p: Progress) -> DeviceProgressOut:
    return DeviceProgressOut(
        device=p.device,
        step=p.step + 1,
        status=p.status,
        desired_version=p.desired_version,
        assigned_at=p.assigned_at,
        healthy_at=p.healthy_at,
        soak_started_at=p.soak_started_at,
        soak_reports=p.soak_reports,
        max_lag_ms=p.max_lag_ms,
        reason=p.reason,
    )


def _rollout_out(r: RolloutRecord, desired: list[VersionOut] | None = None) -> RolloutOut:
    planned = [p for p in r.devices if p.step >= 0]
    return RolloutOut(
        id=r.id,
        handler=r.handler,
        release=r.release,
        image=r.image,
        previous_release=r.previous_release,
        previous_image=r.previous_image,
        target=r.target,
        canary=r.limits.canary,
        batch=r.limits.batch,
        soak=r.limits.soak,
        max_error_rate=r.limits.max_error_rate,
        max_lag_ms=r.limits.max_lag_ms,
        health_timeout=r.limits.health_timeout,
        min_events=r.limits.min_events,
        state=r.state,
        step=r.step + 1,
        steps=r.steps,
        passed=sum(p.status is DeviceStatus.PASSED for p in planned),
        planned=len(planned),
        reason=r.reason,
        created_at=r.created_at,
        updated_at=r.updated_at,
        finished_at=r.finished_at,
        devices=[_progress_out(p) for p in r.devices],
        desired=desired or [],
    )
