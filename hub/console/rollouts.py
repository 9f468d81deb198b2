"""Rollouts: the list with a form to start one, each rollout's steps and gate readings, and the operator's
pause / resume / abort / undo. Actions do what the API's rollout routes do, through the same services."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

import asyncio
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from hub.api.routes.catalog import NO_KEY
from hub.api.schemas.rollouts import RolloutIn
from hub.console.auth import Refused, Session
from hub.console.context import PREFIX, Console, refused
from hub.console.views import render
from hub.errors import Conflict, HubError, NotFound, StoreError, Unprocessable
from hub.fleet.labels import Selector
from hub.rollouts.controller import RolloutController
from hub.rollouts.plan import ACTIVE, DeviceStatus, Limits, Progress, State
from hub.rollouts.store import RolloutRecord

Command = Literal["pause", "resume", "abort", "undo"]
_STATUS = {NotFound: 404, Conflict: 409, Unprocessable: 422, StoreError: 503}
_DONE = {"pause": "paused", "resume": "resumed", "abort": "aborted", "undo": "undone"}
DEFAULTS = Limits()
FORM_FIELDS = ("handler", "release", "target", "canary", "batch", "soak", "max_error_rate", "max_lag_ms",
               "health_timeout", "min_events")  # fmt: skip
"""The form's fields: RolloutIn's, validated by it (an empty one takes the API's default)."""


@dataclass(frozen=True, slots=True)
class StepView:
    """One step of a plan as the page shows it: its devices and how many passed their gate."""

    index: int
    devices: list[Progress]

    @property
    def passed(self) -> int:
        return sum(p.status is DeviceStatus.PASSED for p in self.devices)

    @property
    def name(self) -> str:
        return "held (outside the plan)" if self.index < 0 else f"step {self.index + 1}"


def steps_of(record: RolloutRecord) -> list[StepView]:
    steps = [StepView(i, [p for p in record.devices if p.step == i]) for i in range(len(record.steps))]
    held = [p for p in record.devices if p.step < 0]
    return steps + ([StepView(-1, held)] if held else [])


def commands_for(state: State) -> list[str]:
    """The actions the rollout's state allows, in the order the page shows them."""
    allowed = {State.RUNNING: ["pause", "abort", "undo"], State.PAUSED: ["resume", "abort", "undo"]}
    return allowed.get(state, [] if state is State.UNDONE else ["undo"])


def routes(console: Console) -> APIRouter:
    router = APIRouter()

    async def list_page(session: Session, *, partial: bool = False, status: int = 200, message: str | None = None,
                        error: str | None = None, form: dict[str, str] | None = None) -> Response:  # fmt: skip
        records = await asyncio.to_thread(console.rollouts.all)
        handlers = await asyncio.to_thread(console.catalog.handlers)
        return render("_rollouts.html" if partial else "rollouts.html", session=session, status=status,
                      message=message, error=error, records=records, handlers=handlers, form=form or {},
                      defaults=DEFAULTS, active=ACTIVE, commands_for=commands_for, signing=console.desired is not None,
                      now=console.clock(), title="Rollouts")  # fmt: skip

    async def detail_page(session: Session, rollout_id: int, *, partial: bool = False, status: int = 200,
                          message: str | None = None, error: str | None = None) -> Response:  # fmt: skip
        try:
            record = await asyncio.to_thread(console.rollouts.get, rollout_id)
        except NotFound as exc:
            return render("refused.html", session=session, status=404, error=str(exc), title="Unknown rollout")
        return render("_rollout.html" if partial else "rollout.html", session=session, status=status,
                      message=message, error=error, r=record, steps=steps_of(record),
                      commands=commands_for(record.state), now=console.clock(),
                      title=f"Rollout {rollout_id}")  # fmt: skip

    @router.get(f"{PREFIX}/rollouts")
    async def rollouts_page(request: Request, partial: bool = False) -> Response:
        return await list_page(await console.page_session(request, partial=partial), partial=partial)

    @router.get(f"{PREFIX}/rollouts/{{rollout_id}}")
    async def rollout_page(request: Request, rollout_id: int, partial: bool = False) -> Response:
        return await detail_page(await console.page_session(request, partial=partial), rollout_id, partial=partial)

    @router.post(f"{PREFIX}/rollouts")
    async def start(request: Request) -> Response:
        try:
            session, form = await console.auth.require_csrf(request)
        except Refused as exc:
            return refused(exc)
        fields = {k: form[k].strip() for k in FORM_FIELDS if form.get(k, "").strip()}
        try:
            if console.desired is None:
                raise Conflict(NO_KEY)
            body = RolloutIn.model_validate({**fields, "target": fields.get("target", "").replace(",", " ").split()})
            record = await asyncio.to_thread(
                console.rollouts.create, body.handler, body.release, Selector.parse(body.target), body.limits
            )
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in exc.errors())
            return await list_page(session, status=422, error=f"the rollout was not started: {why}", form=fields)
        except HubError as exc:
            return await list_page(session, status=_status(exc), error=f"the rollout was not started: {exc}",
                                   form=fields)  # fmt: skip
        message = f"rollout {record.id} of {record.handler} to {record.release} started: the first step is assigned "\
                  "within a second"  # fmt: skip
        return await detail_page(session, record.id, status=201, message=message)

    @router.post(f"{PREFIX}/rollouts/{{rollout_id}}/{{command}}")
    async def control(request: Request, rollout_id: int, command: Command) -> Response:
        try:
            session, _form = await console.auth.require_csrf(request)
        except Refused as exc:
            return refused(exc)
        try:
            await _control(console, rollout_id, command)
        except HubError as exc:
            return await detail_page(session, rollout_id, status=_status(exc), error=f"not {_DONE[command]}: {exc}")
        return await detail_page(session, rollout_id, message=f"rollout {rollout_id} {_DONE[command]}")

    return router


async def _control(console: Console, rollout_id: int, command: str) -> None:
    """What ``POST /v1/rollouts/{id}/{command}`` does: the change, then the recompiles it calls for."""
    if console.desired is None:
        raise Conflict(NO_KEY)
    ctl = RolloutController(console.store, console.desired, clock=console.clock)
    done = await asyncio.to_thread(ctl.changes.control, rollout_id, command)
    if done.recompile:
        await console.desired.changed(done.recompile)
    await ctl.compile_pending(rollout_id)


def _status(exc: Exception) -> int:
    return next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 500)
