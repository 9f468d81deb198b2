"""API tokens stored hashed (table ``api_tokens``): ``hub token create NAME`` prints a token once.

A token is ``eft_`` + 43 characters of base64url (256 random bits); the store keeps its SHA-256 only. A salt
or a slow hash protects low-entropy secrets (passwords) against guessing and precomputed tables; a 256-bit
random token cannot be guessed either way, and an unsalted digest can be looked up by its unique index, so
checking a token is one indexed query, not a hash per stored token. Whoever reads the database learns the
names and the first characters of each token, never a usable token.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select

from hub.db.store import Store
from hub.db.tables import ApiTokenRow
from hub.errors import Conflict, StoreConflict, Unprocessable

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


class Tokens:
    """Create, list, revoke and check the API tokens in ``store`` (blocking; use ``asyncio.to_thread``)."""

    def __init__(self, store: Store) -> None:
        self._store = store

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
        except StoreConflict as exc:
            raise Conflict(f"a token named {name!r} exists: revoke it first or choose another name") from exc
        return token, info

    def list_tokens(self) -> list[TokenInfo]:
        with self._store.transaction("list_tokens") as session:
            rows = session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.name))
            return [TokenInfo(r.name, r.hint, r.created_at) for r in rows]

    def revoke(self, name: str) -> bool:
        """Delete the token ``name``; False when there is none. The API refuses it from the next request."""
        with self._store.transaction("revoke_token") as session:
            row = session.get(ApiTokenRow, name)
            if row is None:
                return False
            session.delete(row)
            return True

    def check(self, presented: str | None) -> bool | None:
        """True: ``presented`` is a stored token; False: it is not; None: no token is stored at all."""
        with self._store.transaction("check_token") as session:
            if presented:
                found = session.scalar(select(ApiTokenRow.name).where(ApiTokenRow.digest == digest(presented)))
                if found is not None:
                    return True
            return False if session.scalar(select(ApiTokenRow.name).limit(1)) is not None else None
