"""API routes of the fleet registry: devices, their reported state, labels and desired state.

Mounted under ``/v1`` by :func:`hub.api.app.create_app`, behind its token.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from edge_protocol.desired import SignedDesired
from hub.api.schemas.catalog import DesiredOut
from hub.api.schemas.fleet import DeviceDetailOut, DeviceOut, LabelsUpdate
from hub.db.store import Store
from hub.desired.documents import DesiredRecord, current_record
from hub.desired.publisher import DesiredPublisher
from hub.errors import NotFound
from hub.fleet.devices import Devices
from hub.fleet.labels import LabelError, Selector, check_key, check_labels
from hub.fleet.registry import DeviceView, Fleet
from hub.ingest.conflicts import Refusals

_LABEL_HELP = "key=value; repeat it and every term must match the device's labels"


def fleet_router(store: Store, desired: DesiredPublisher | None) -> APIRouter:
    """Routes over ``store``; label changes recompile the device's desired state through ``desired``."""
    router = APIRouter(tags=["devices"])
    fleet = Fleet(store)
    known = Devices(store)
    refusals = Refusals(store)

    @router.get("/devices")
    async def devices(
        label: Annotated[list[str] | None, Query(description=f"only devices with this label: {_LABEL_HELP}")] = None,
    ) -> list[DeviceOut]:
        """Every device the hub has heard from (whose labels match), by id, with its reported summary."""
        selector = selector_of(label)
        return [_device_out(view) for view in await asyncio.to_thread(fleet.devices, selector)]

    @router.get("/devices/{device_id}")
    async def device(device_id: str) -> DeviceDetailOut:
        """One device: status, labels, desired and applied versions, handlers, counters, loss ledger, alarms."""
        view = await asyncio.to_thread(fleet.device, device_id)
        if view is None:
            raise NotFound(f"unknown device {device_id!r}: the hub has not heard from it")
        detail = _device_detail_out(view)
        refused = await asyncio.to_thread(refusals.by_device, device_id)
        return detail.model_copy(update={"refused": refused}) if refused else detail

    @router.get("/devices/{device_id}/desired")
    async def desired_state(device_id: str) -> DesiredOut:
        """The device's current desired-state document and version, as signed and published."""
        record = await asyncio.to_thread(current_record, store, device_id)
        if record is None:
            raise NotFound(f"no desired state for {device_id!r}: unknown device, or the hub has no signing key")
        return _desired_out(record)

    @router.put("/devices/{device_id}/labels")
    async def put_labels(device_id: str, body: LabelsUpdate) -> dict[str, str]:
        """Set, then remove, labels of a device; answers its labels afterwards. 404 for a device never seen.

        The device's desired state follows its labels (subscriptions whose target it now matches, or not)."""
        try:
            to_set = check_labels(body.set_)
            to_remove = [check_key(key) for key in body.remove]
        except LabelError as exc:
            raise HTTPException(422, str(exc)) from exc
        labels = await asyncio.to_thread(known.update_labels, device_id, to_set, to_remove)
        if labels is None:
            raise NotFound(f"unknown device {device_id!r}: the hub has not heard from it")
        if desired is not None:
            await desired.changed([device_id])
        return labels

    return router


def selector_of(terms: list[str] | None) -> Selector:
    try:
        return Selector.parse(terms)
    except LabelError as exc:
        raise HTTPException(422, f"label: {exc}") from exc


# Records to JSON shapes: here, beside their routes, so that the schemas (shared with the CLI) import no storage.


def _summary(view: DeviceView) -> dict[str, object]:
    dev, rep = view.info, view.reported
    return {
        "id": dev.id,
        "first_seen": dev.first_seen,
        "last_seen": dev.last_seen,
        "online": dev.online,
        "agent_version": dev.agent_version,
        "labels": dict(dev.labels),
        "applied_version": view.applied_version,
        "desired_version": view.desired_version,
        "handlers": list(rep.handlers) if rep else [],
        "losses_total": view.losses_total,
        "reported_at": rep.ts if rep else None,
        "alarms": list(rep.alarms) if rep else [],
    }


def _device_out(view: DeviceView) -> DeviceOut:
    return DeviceOut(**_summary(view))


def _device_detail_out(view: DeviceView) -> DeviceDetailOut:
    rep = view.reported
    if rep is None:
        return DeviceDetailOut(**_summary(view))
    return DeviceDetailOut(
        **_summary(view),
        subscriptions=dict(rep.subscriptions),
        losses={sub: dict(reasons) for sub, reasons in rep.losses.items()},
        outbox_pending=rep.outbox_pending,
        last_refusal=rep.last_refusal,
        desired_refusals=dict(rep.desired_refusals),
        desired_expires_at=rep.desired_expires_at,
        received_at=view.received_at,
    )


def _desired_out(record: DesiredRecord) -> DesiredOut:
    return DesiredOut(
        device=record.device,
        version=record.version,
        content_hash=record.content_hash,
        created_at=record.created_at,
        published_at=record.published_at,
        key_id=SignedDesired.model_validate_json(record.envelope).key_id,
        document=record.document,
    )
