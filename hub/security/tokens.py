"""API tokens stored hashed (table ``api_tokens``): ``hub token create NAME`` prints a token once.

A token is ``eft_`` + 43 characters of base64url (256 random bits); the store keeps its SHA-256 only. A salt
or a slow hash protects low-entropy secrets (passwords) against guessing and precomputed tables; a 256-bit
random token cannot be guessed either way, and an unsalted digest can be looked up by its unique index, so
checking a token is one indexed query, not a hash per stored token. Whoever reads the database learns the
names and the first characters of each token, never a usable token.

The API fails closed: the first token (stored, or the config's ``[api] token`` seen by ``hub serve``) writes
the ``api_lock`` row, which nothing removes. From then on a request needs a valid token even when the last
stored one has been revoked; only a hub that never had a token is open (development on loopback). A database
from before the lock row counts as locked while it holds a token, and the next create, revoke or ``hub serve``
writes the row.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.db.store import Store
from hub.db.tables import ApiLockRow, ApiTokenRow
from hub.errors import Conflict, StoreConflict, Unprocessable

log = logging.getLogger(__name__)

PREFIX = "eft_"
HINT_CHARS = len(PREFIX) + 4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token as listed: never the token itself."""

    name: str
    hint: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Revoked:
    """A revoked token's name and how many stored tokens are left (0: only the [api] token, if any, opens the
    API now; the API stays closed)."""

    name: str
    remaining: int


CLOSED_AFTER_LAST_REVOKE = (
    "that was the last stored token: the API and the console stay closed and refuse every request "
    "(except with the config's [api] token) until `hub token create NAME`"
)


class Tokens:
    """Create, list, revoke and check the API tokens in ``store`` (blocking; use ``asyncio.to_thread``)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._locked = False  # once seen locked, always: the lock row is never removed

    def create(self, name: str, *, now: float | None = None) -> tuple[str, TokenInfo]:
        """A new token named ``name``: the token (shown once) and what is stored about it."""
        if not _NAME.match(name):
            raise Unprocessable(f"token name {name!r}: letters, digits, '_.@-', at most 64")
        token = PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(name, token[:HINT_CHARS], time.time() if now is None else now)
        row = ApiTokenRow(name=name, digest=digest(token), hint=info.hint, created_at=info.created_at)
        try:
            with self._store.transaction("create_token") as session:
                session.add(row)
                self._lock(session, f"token {name!r} created", info.created_at)
        except StoreConflict as exc:
            raise Conflict(f"a token named {name!r} exists: revoke it first or choose another name") from exc
        return token, info

    def list_tokens(self) -> list[TokenInfo]:
        with self._store.transaction("list_tokens") as session:
            rows = session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.name))
            return [TokenInfo(r.name, r.hint, r.created_at) for r in rows]

    def count(self) -> int:
        """How many tokens are stored."""
        with self._store.transaction("count_tokens") as session:
            return session.scalar(select(func.count()).select_from(ApiTokenRow)) or 0

    def revoke(self, name: str, *, now: float | None = None) -> Revoked | None:
        """Delete the token ``name``; None when there is none. The API refuses it from the next request, and
        stays closed when it was the last one (the lock row is written first, for databases from before it)."""
        with self._store.transaction("revoke_token") as session:
            row = session.get(ApiTokenRow, name)
            if row is None:
                return None
            self._lock(session, "tokens existed before the lock row", time.time() if now is None else now)
            session.delete(row)
            session.flush()
            remaining = session.scalar(select(func.count()).select_from(ApiTokenRow)) or 0
        if remaining == 0:
            log.warning("API token %r revoked: %s", name, CLOSED_AFTER_LAST_REVOKE)
        return Revoked(name, remaining)

    def lock(self, reason: str, *, now: float | None = None) -> None:
        """Remember for good that this hub has had a token (``hub serve`` with an ``[api] token`` calls it)."""
        with self._store.transaction("lock_api") as session:
            self._lock(session, reason, time.time() if now is None else now)

    def locked(self) -> bool:
        """Whether the hub has ever had a token: the lock row, or (a database from before it) a stored token."""
        if self._locked:
            return True
        with self._store.transaction("api_locked") as session:
            return self._is_locked(session)

    def check(self, presented: str | None) -> bool | None:
        """True: ``presented`` is a stored token; False: it is not, and the hub has had a token, so the API is
        closed to it (even with no stored token left); None: the hub never had a token (an open dev hub)."""
        with self._store.transaction("check_token") as session:
            if presented:
                found = session.scalar(select(ApiTokenRow.name).where(ApiTokenRow.digest == digest(presented)))
                if found is not None:
                    return True
            return False if self._locked or self._is_locked(session) else None

    def _is_locked(self, session: Session) -> bool:
        locked = session.get(ApiLockRow, 1) is not None or session.scalar(select(ApiTokenRow.name).limit(1)) is not None
        self._locked = self._locked or locked
        return locked

    def _lock(self, session: Session, reason: str, now: float) -> None:
        # ON CONFLICT DO NOTHING: two first tokens created at once both try; the older row stays.
        session.execute(
            self._store.insert(ApiLockRow).values(id=1, reason=reason, locked_at=now).on_conflict_do_nothing()
        )
        self._locked = True
