"""Leases: exactly one hub replica runs each singleton job (the rollout controller, re-signing), with failover.

A lease is a row of ``leases`` (name, holder, epoch, expires_at). Time is the *database's* clock (PostgreSQL's
``statement_timestamp()``, SQLite's ``julianday('now')``: one host), so the replicas' clocks do not matter.
Taking and renewing are one conditional ``UPDATE`` each, which the database serialises:

- acquire: ``... SET holder = me, epoch = epoch + 1, expires_at = now + ttl WHERE name = n AND expires_at <= now``
- renew: ``... SET expires_at = now + ttl WHERE name = n AND holder = me AND epoch = e AND expires_at > now``
- release (a graceful stop): ``... SET expires_at = now WHERE holder = me AND epoch = e``

A lease that expired is never renewed, only acquired again, with a new epoch: the epoch is the fencing token.
:class:`Singleton` runs a job while it holds the lease: it renews every ``renew_every`` and measures the lease on
its own monotonic clock from the moment it *sent* the last successful renewal (the database's expiry is later
than that), so a replica that cannot renew (database unreachable, process stalled) cancels its job before the
database's expiry, ``STOP_MARGIN`` early. A standby tries to acquire every ``renew_every``: when a holder dies,
another replica runs the job within ``ttl + renew_every`` of its last renewal.

A job that was cancelled may still have one transaction in flight in a worker thread. Writes that a stale holder
must not make take a :class:`Fence`: checked inside the write's transaction, it locks the lease row (``FOR
SHARE`` on PostgreSQL; SQLite serialises writers) and raises :class:`LeaseLost` unless holder and epoch are still
this tenure's, so such a write commits before any takeover or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Double, cast, extract, func, literal, select, update
from sqlalchemy.orm import Session

from hub import metrics
from hub.db.store import Store
from hub.db.tables import LeaseRow
from hub.errors import HubError, StoreError

log = logging.getLogger(__name__)

TTL = 5.0
"""Seconds a lease lasts after its last renewal, by the database's clock."""
RENEW_EVERY = 1.0
"""Seconds between a holder's renewals, and between a standby's attempts to acquire."""
STOP_MARGIN = 0.5
"""A holder that could not renew cancels its job this long before its lease can expire."""
RELEASE_TIMEOUT = 2.0
"""How long a stopping replica waits for the database to take its release (else the lease simply expires)."""

T = TypeVar("T")


class LeaseLost(HubError):
    """A fenced write found the lease held by another replica (or another tenure): nothing was written."""


def replica_id() -> str:
    """This process's name as a holder: host, pid and a random part (a restarted process is a new holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease held: ``epoch`` is the fencing token, ``expires_at`` the database's time of expiry."""

    name: str
    holder: str
    epoch: int
    expires_at: float


class Leases:
    """Acquire, renew, release and read leases in the store. ``clock`` replaces the database's clock (tests)."""

    def __init__(self, store: Store, *, clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self._clock = clock

    def _now(self) -> Any:
        if self._clock is not None:
            return literal(self._clock(), Double)
        if self.store.dialect.name == "postgresql":
            return cast(extract("epoch", func.statement_timestamp()), Double)
        return (func.julianday("now") - 2440587.5) * 86400.0  # SQLite: the local clock, one host

    def acquire(self, name: str, holder: str, ttl: float) -> Grant | None:
        """Take ``name`` if nobody holds it (or its holder's lease expired); None when someone does."""
        with self.store.transaction("acquire lease") as session:
            # The row exists once and for all, expired: then taking it is always the same UPDATE.
            insert = self.store.insert(LeaseRow).values(
                name=name, holder="", epoch=0, expires_at=0.0, acquired_at=0.0, renewed_at=0.0
            )
            session.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
            now = self._now()
            taken = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, LeaseRow.expires_at <= now)
                .values(holder=holder, epoch=LeaseRow.epoch + 1, expires_at=now + ttl, acquired_at=now, renewed_at=now)
            )
            if getattr(taken, "rowcount", 0) != 1:
                return None
            return _grant(session, name)

    def renew(self, grant: Grant, ttl: float) -> Grant | None:
        """Extend ``grant`` by ``ttl`` from now; None when it expired or another tenure holds the lease."""
        with self.store.transaction("renew lease") as session:
            now = self._now()
            renewed = session.execute(
                update(LeaseRow)
                .where(
                    LeaseRow.name == grant.name,
                    LeaseRow.holder == grant.holder,
                    LeaseRow.epoch == grant.epoch,
                    LeaseRow.expires_at > now,
                )
                .values(expires_at=now + ttl, renewed_at=now)
            )
            if getattr(renewed, "rowcount", 0) != 1:
                return None
            return _grant(session, grant.name)

    def release(self, grant: Grant) -> bool:
        """Give ``grant`` up now (another replica may acquire at once); False when it was no longer held."""
        with self.store.transaction("release lease") as session:
            now = self._now()
            released = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == grant.name, LeaseRow.holder == grant.holder, LeaseRow.epoch == grant.epoch)
                .values(holder="", expires_at=now)
            )
            return getattr(released, "rowcount", 0) == 1

    def current(self, name: str) -> Grant | None:
        """Who holds ``name`` now (None: nobody, or expired)."""
        with self.store.transaction("read lease") as session:
            now = self._now()
            row = session.execute(
                select(LeaseRow.holder, LeaseRow.epoch, LeaseRow.expires_at).where(
                    LeaseRow.name == name, LeaseRow.expires_at > now, LeaseRow.holder != ""
                )
            ).first()
        return None if row is None else Grant(name, row.holder, row.epoch, row.expires_at)


def _grant(session: Session, name: str) -> Grant:
    row = session.execute(
        select(LeaseRow.holder, LeaseRow.epoch, LeaseRow.expires_at).where(LeaseRow.name == name)
    ).one()
    return Grant(name, row.holder, row.epoch, row.expires_at)


@dataclass(frozen=True, slots=True)
class Fence:
    """Checks, inside a write's transaction, that ``grant``'s tenure still holds its lease (see the module doc)."""

    grant: Grant

    def __call__(self, session: Session) -> None:
        """Lock the lease row until the transaction ends; raise :class:`LeaseLost` if the tenure is over."""
        row = session.execute(
            select(LeaseRow.holder, LeaseRow.epoch).where(LeaseRow.name == self.grant.name).with_for_update(read=True)
        ).first()
        if row is None or (row.holder, row.epoch) != (self.grant.holder, self.grant.epoch):
            held = "nobody" if row is None or not row.holder else f"{row.holder} (epoch {row.epoch})"
            raise LeaseLost(f"lease {self.grant.name} epoch {self.grant.epoch} is over: now held by {held}")


class Singleton:
    """Runs ``job(fence)`` on this replica only while it holds lease ``name``; ``run()`` until cancelled.

    The job is started at each acquisition and cancelled when the lease is lost; it should run until cancelled.
    """

    def __init__(
        self,
        leases: Leases,
        name: str,
        job: Callable[[Fence], Coroutine[Any, Any, None]],
        *,
        holder: str | None = None,
        ttl: float = TTL,
        renew_every: float = RENEW_EVERY,
        stop_margin: float = STOP_MARGIN,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < renew_every < ttl - stop_margin:
            raise ValueError(f"lease {name}: renew every {renew_every}s must be shorter than ttl - margin")
        self.name = name
        self.holder = holder or replica_id()
        self._leases = leases
        self._job = job
        self._ttl = ttl
        self._renew_every = renew_every
        self._margin = stop_margin
        self._monotonic = monotonic
        self._refused = False
        self.grant: Grant | None = None

    @property
    def held(self) -> bool:
        """Whether this replica runs the job now."""
        return self.grant is not None

    async def run(self) -> None:
        metrics.LEASE_HELD.labels(self.name).set(0)
        while True:
            sent = self._monotonic()
            grant = await self._call(self._leases.acquire, self.name, self.holder, self._ttl, within=self._ttl)
            if grant is None:
                await asyncio.sleep(max(0.0, sent + self._renew_every - self._monotonic()))
                continue
            await self._hold(grant, sent + self._ttl - self._margin)

    async def _hold(self, grant: Grant, deadline: float) -> None:
        """Run the job while renewing ``grant``; return when the lease is lost (cancelled: release it)."""
        self.grant = grant
        metrics.LEASE_HELD.labels(self.name).set(1)
        log.info("lease %s acquired by %s (epoch %d): running the job here", self.name, self.holder, grant.epoch)
        job = asyncio.create_task(self._job(Fence(grant)), name=f"hub.lease.{self.name}")
        released = False
        try:
            last = self._monotonic()
            while True:
                wake = min(last + self._renew_every, deadline)
                done, _ = await asyncio.wait({job}, timeout=max(0.0, wake - self._monotonic()))
                if done:
                    job.result()  # a job that fails fails the hub, as it would without a lease
                    raise RuntimeError(f"the job of lease {self.name} returned")
                if self._monotonic() >= deadline:
                    log.warning("lease %s (epoch %d) not renewed in time: job stopped", self.name, grant.epoch)
                    return
                last = self._monotonic()
                renewed = await self._call(self._leases.renew, grant, self._ttl, within=deadline - last)
                if renewed is not None:
                    deadline = last + self._ttl - self._margin
                    self.grant = grant = renewed
                elif self._refused:
                    log.warning("lease %s (epoch %d) lost to another replica: job stopped", self.name, grant.epoch)
                    return
        except asyncio.CancelledError:
            released = True
            raise
        finally:
            self.grant = None
            metrics.LEASE_HELD.labels(self.name).set(0)
            job.cancel()
            await asyncio.wait({job})
            if released:
                await self._call(self._leases.release, grant, within=RELEASE_TIMEOUT)
                log.info("lease %s (epoch %d) released", self.name, grant.epoch)

    async def _call(self, fn: Callable[..., T | None], *args: Any, within: float) -> T | None:
        """``fn(*args)`` in a thread, given up after ``within`` s; None on a StoreError or time-out.

        ``_refused`` tells an answer (None from the database) from no answer."""
        self._refused = False
        call = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        done, _ = await asyncio.wait({call}, timeout=max(0.0, within))
        if not done:
            call.add_done_callback(_consume)
            log.warning("lease %s: the store did not answer within %.1fs", self.name, within)
            return None
        try:
            result = call.result()
        except StoreError as exc:
            log.warning("lease %s: %s", self.name, exc)
            return None
        self._refused = result is None
        return result


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a late failure of an abandoned call is not "never retrieved"
