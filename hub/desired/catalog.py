"""Handlers and subscriptions managed at the hub, stored as the shared specs (``edge_protocol.specs``) in SQL.

A subscription carries a target (a label selector; empty: every device) besides its SubscriptionSpec. The
references are kept by the database as well as checked here: a subscription's handler must exist (a foreign
key), and a handler that a subscription uses cannot be deleted (ON DELETE RESTRICT), so two hub replicas
racing each other cannot break them either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from hub.db.store import Store
from hub.db.tables import HandlerRow, SubscriptionRow
from hub.desired import releases
from hub.errors import Conflict, NotFound, StoreConflict, Unprocessable
from hub.fleet.labels import Selector


@dataclass(frozen=True, slots=True)
class ManagedHandler:
    spec: HandlerSpec
    updated_at: float
    used_by: tuple[str, ...] = ()
    """Names of the subscriptions that run this handler."""

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class ManagedSubscription:
    spec: SubscriptionSpec
    target: Selector
    updated_at: float

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every handler and subscription, as one transaction saw them."""

    handlers: dict[str, HandlerSpec]
    subscriptions: list[ManagedSubscription]


def read_snapshot(session: Session) -> Snapshot:
    """The whole catalog, read in the caller's transaction (the desired-state compiler's)."""
    handlers = {row.name: HandlerSpec.model_validate(row.spec) for row in session.scalars(select(HandlerRow))}
    rows = session.scalars(select(SubscriptionRow).order_by(SubscriptionRow.name))
    return Snapshot(handlers, [_subscription(row) for row in rows])


class Catalog:
    """CRUD of handlers and subscriptions; errors are NotFound (404), Conflict (409) and Unprocessable (422)."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    # -- handlers --------------------------------------------------------------------------------------------

    def handlers(self) -> list[ManagedHandler]:
        with self._store.transaction("list handlers") as session:
            users = _users(session)
            rows = session.scalars(select(HandlerRow).order_by(HandlerRow.name))
            return [_handler(row, users.get(row.name, ())) for row in rows]

    def handler(self, name: str) -> ManagedHandler:
        with self._store.transaction("get handler") as session:
            row = session.get(HandlerRow, name)
            if row is None:
                raise NotFound(f"no handler named {name!r}")
            return _handler(row, _users(session).get(name, ()))

    def put_handler(
        self, spec: HandlerSpec, *, replace: bool, version: str | None = None
    ) -> tuple[ManagedHandler, ManagedHandler | None]:
        """Create (or, with ``replace``, create or replace) a handler; returns it and what it replaced.

        Its image becomes its stable release (``version``, ``initial`` for a new handler; a new image without a
        version gets the next free name), in the same transaction."""
        try:
            with self._store.transaction("put handler") as session:
                row = session.get(HandlerRow, spec.name, with_for_update=True)
                users = _users(session).get(spec.name, ())
                previous = None if row is None else _handler(row, users)
                if previous is not None and not replace:
                    raise Conflict(f"handler {spec.name!r} already exists: replace it with --replace (PUT)")
                if row is None:
                    row = HandlerRow(name=spec.name)
                    session.add(row)
                row.spec = spec.model_dump(mode="json")
                row.updated_at = self._clock()
                session.flush()
                releases.adopt_image(session, spec.name, spec.image, version, row.updated_at)
                return _handler(row, users), previous
        except StoreConflict as exc:
            raise Conflict(f"handler {spec.name!r} was changed at the same time; try again ({exc.reason})") from exc

    def remove_handler(self, name: str) -> ManagedHandler:
        try:
            with self._store.transaction("remove handler") as session:
                row = session.get(HandlerRow, name, with_for_update=True)
                if row is None:
                    raise NotFound(f"no handler named {name!r}")
                users = _users(session).get(name, ())
                if users:
                    raise Conflict(f"handler {name!r} is used by subscription(s) {', '.join(users)}: remove them first")
                removed = _handler(row, ())
                session.execute(delete(HandlerRow).where(HandlerRow.name == name))
                return removed
        except StoreConflict as exc:
            raise Conflict(f"handler {name!r} came into use meanwhile: {exc.reason}") from exc

    # -- subscriptions ---------------------------------------------------------------------------------------

    def subscriptions(self) -> list[ManagedSubscription]:
        with self._store.transaction("list subscriptions") as session:
            return read_snapshot(session).subscriptions

    def subscription(self, name: str) -> ManagedSubscription:
        with self._store.transaction("get subscription") as session:
            row = session.get(SubscriptionRow, name)
            if row is None:
                raise NotFound(f"no subscription named {name!r}")
            return _subscription(row)

    def put_subscription(
        self, spec: SubscriptionSpec, target: Selector, *, replace: bool
    ) -> tuple[ManagedSubscription, ManagedSubscription | None]:
        """Create (or, with ``replace``, create or replace) a subscription; returns it and what it replaced."""
        try:
            with self._store.transaction("put subscription") as session:
                if session.get(HandlerRow, spec.handler) is None:
                    raise Unprocessable(
                        f"spec.handler: no handler named {spec.handler!r}: add it first (hub handlers add)"
                    )
                row = session.get(SubscriptionRow, spec.name, with_for_update=True)
                previous = None if row is None else _subscription(row)
                if previous is not None and not replace:
                    raise Conflict(f"subscription {spec.name!r} already exists: replace it with --replace (PUT)")
                if row is None:
                    row = SubscriptionRow(name=spec.name)
                    session.add(row)
                row.handler = spec.handler
                row.target = [f"{key}={value}" for key, value in target.terms]
                row.spec = spec.model_dump(mode="json")
                row.updated_at = self._clock()
                return _subscription(row), previous
        except StoreConflict as exc:
            raise Conflict(f"subscription {spec.name!r}: {exc.reason} (changed meanwhile? try again)") from exc

    def remove_subscription(self, name: str) -> ManagedSubscription:
        with self._store.transaction("remove subscription") as session:
            row = session.get(SubscriptionRow, name, with_for_update=True)
            if row is None:
                raise NotFound(f"no subscription named {name!r}")
            removed = _subscription(row)
            session.execute(delete(SubscriptionRow).where(SubscriptionRow.name == name))
            return removed


def _users(session: Session) -> dict[str, tuple[str, ...]]:
    users: dict[str, list[str]] = {}
    for sub, handler in session.execute(select(SubscriptionRow.name, SubscriptionRow.handler)):
        users.setdefault(handler, []).append(sub)
    return {handler: tuple(sorted(subs)) for handler, subs in users.items()}


def _handler(row: HandlerRow, used_by: tuple[str, ...]) -> ManagedHandler:
    return ManagedHandler(HandlerSpec.model_validate(row.spec), row.updated_at, used_by)


def _subscription(row: SubscriptionRow) -> ManagedSubscription:
    return ManagedSubscription(SubscriptionSpec.model_validate(row.spec), Selector.parse(row.target), row.updated_at)
