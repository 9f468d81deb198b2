"""The durable outbox: closed windows wait here (SQLite, WAL) until the hub acknowledges storing them.

One connection, used from one dedicated thread, so every write is serialised without locks and the event
loop never blocks on disk. The same transaction that adds closed windows also replaces the subscription's
checkpoint of open windows: after a crash the agent resumes exactly where its last commit left it.
Every record the outbox gives up (expired, over the size cap, or refused by the hub as a conflict) is counted
per subscription in a loss ledger that the agent reports.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from edge_agent.errors import OutboxError
from edge_protocol.aggregate import WindowResult
from edge_protocol.clocks import STEADY_WALL

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    subscription TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    subscription TEXT PRIMARY KEY,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS delivered (
    subscription TEXT NOT NULL,
    mid INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (subscription, mid)
);
CREATE TABLE IF NOT EXISTS revisions (
    subscription TEXT PRIMARY KEY,
    spec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS losses (
    subscription TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (subscription, reason)
);
"""


class Outbox:
    """Async facade over the SQLite outbox; use as ``async with Outbox(...) as outbox``."""

    def __init__(
        self,
        path: Path,
        *,
        ttl: float = 7200.0,
        max_records: int = 100_000,
        policy: Literal["drop-oldest", "reject-new"] = "drop-oldest",
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Callable[[], float] = STEADY_WALL.now,
    ) -> None:
        self.path = path
        self._ttl, self._max, self._policy, self._sync = ttl, max_records, policy, synchronous
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._count = 0
        self._state: Literal["new", "open", "closed"] = "new"
        self.new_records = asyncio.Event()

    async def __aenter__(self) -> Outbox:
        if self._state != "new":
            raise RuntimeError(f"outbox is {self._state}; open a new one")
        await self._run(self._open)
        self._state = "open"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._state == "open":
            await self._run(self._close)
        self._state = "closed"
        self._pool.shutdown(wait=True)

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        if self._state == "closed":
            # Its thread pool is shut down: say so in our own terms, not concurrent.futures' RuntimeError.
            raise OutboxError(f"outbox {self.path} is closed")
        loop = asyncio.get_running_loop()
        try:
            # Shielded: a cancelled caller must not abandon a half-finished transaction's outcome.
            return await asyncio.shield(loop.run_in_executor(self._pool, func, *args))
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    # -- executor thread -----------------------------------------------------------------------------
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._sync}")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db
        self._count = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    def _commit(
        self,
        results: list[WindowResult],
        checkpoints: dict[str, bytes | None],
        delivered: list[tuple[str, int, bytes]],
    ) -> int:
        db = self._conn
        now = self._clock()
        added = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for result in results:
                if self._count >= self._max and not self._make_room(result.subscription):
                    continue
                db.execute(
                    "INSERT INTO records (created, subscription, body) VALUES (?, ?, ?)",
                    (now, result.subscription, result.model_dump_json().encode()),
                )
                self._count += 1
                added += 1
            for sub, state in checkpoints.items():
                if state is None:
                    db.execute("DELETE FROM checkpoints WHERE subscription = ?", (sub,))
                    continue
                db.execute(
                    "INSERT INTO checkpoints (subscription, state) VALUES (?, ?) "
                    "ON CONFLICT(subscription) DO UPDATE SET state = excluded.state",
                    (sub, state),
                )
            if delivered:
                db.executemany(
                    "INSERT INTO delivered (subscription, mid, digest) VALUES (?, ?, ?) "
                    "ON CONFLICT(subscription, mid) DO UPDATE SET digest = excluded.digest",
                    delivered,
                )
            db.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed (disk full) has already undone the transaction: a second ROLLBACK would
            # raise and hide the real error. Either way the count is read back from what the file holds.
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._count = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            raise
        return added

    def _make_room(self, subscription: str) -> bool:
        db = self._conn
        if self._policy == "reject-new":
            self._lose(subscription, "rejected-full", 1)
            return False
        row = db.execute("SELECT seq, subscription FROM records ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            return True
        db.execute("DELETE FROM records WHERE seq = ?", (row[0],))
        self._count -= 1
        self._lose(row[1], "dropped-full", 1)
        return True

    def _lose(self, subscription: str, reason: str, n: int) -> None:
        self._conn.execute(
            "INSERT INTO losses (subscription, reason, count) VALUES (?, ?, ?) "
            "ON CONFLICT(subscription, reason) DO UPDATE SET count = count + excluded.count",
            (subscription, reason, n),
        )

    def _fetch(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self._conn.execute(
            "SELECT seq, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        ).fetchall()
        return [(int(seq), bytes(body)) for seq, body in rows]

    def _delete(self, ranges: list[tuple[int, int]]) -> int:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        deleted = 0
        for lo, hi in ranges:
            deleted += db.execute("DELETE FROM records WHERE seq BETWEEN ? AND ?", (lo, hi)).rowcount
        db.execute("COMMIT")
        self._count -= deleted
        return deleted

    def _refuse(self, refused: list[tuple[int, str]]) -> int:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            given_up = 0
            for seq, reason in refused:
                row = db.execute("SELECT subscription FROM records WHERE seq = ?", (seq,)).fetchone()
                if row is None:  # a refusal repeated (the record resent before the first arrived) counts once
                    continue
                db.execute("DELETE FROM records WHERE seq = ?", (seq,))
                self._lose(row[0], reason, 1)
                given_up += 1
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._count -= given_up
        return given_up

    def _expire(self) -> int:
        db = self._conn
        cutoff = self._clock() - self._ttl
        rows = db.execute(
            "SELECT subscription, COUNT(*) FROM records WHERE created < ? GROUP BY subscription", (cutoff,)
        ).fetchall()
        if not rows:
            return 0
        db.execute("BEGIN IMMEDIATE")
        for sub, n in rows:
            self._lose(sub, "expired", int(n))
        deleted = db.execute("DELETE FROM records WHERE created < ?", (cutoff,)).rowcount
        db.execute("COMMIT")
        self._count -= deleted
        return int(deleted)

    # -- async API -----------------------------------------------------------------------------------
    async def commit(
        self,
        results: list[WindowResult],
        checkpoints: dict[str, dict[str, Any] | None],
        delivered: list[tuple[str, int, bytes]] | None = None,
    ) -> int:
        """Durably add closed windows, replace checkpoints and record the packet ids whose effect this commit
        holds (``(subscription, mid, digest)``), in one transaction; returns the records added. A checkpoint of
        None deletes it."""
        states = {key: orjson.dumps(snap) if snap is not None else None for key, snap in checkpoints.items()}
        added = await self._run(self._commit, results, states, delivered or [])
        if added:
            self.new_records.set()
        return added

    async def fetch(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` records with sequence above ``after``, oldest first."""
        return await self._run(self._fetch, after, limit)

    async def delete(self, ranges: list[tuple[int, int]]) -> int:
        """Remove acknowledged records (inclusive sequence ranges)."""
        return await self._run(self._delete, ranges)

    async def refuse(self, refused: list[tuple[int, str]]) -> int:
        """Give up records the hub refused (``(seq, reason)``, e.g. ``conflict``): deleted and counted in the loss
        ledger under that reason, in one transaction; returns how many were still here."""
        return await self._run(self._refuse, refused)

    async def expire(self) -> int:
        """Drop records older than the time-to-live, counting them in the loss ledger."""
        return await self._run(self._expire)

    async def delivered(self) -> dict[str, dict[int, bytes]]:
        """subscription -> packet id -> digest of the last event committed under that id."""
        rows = await self._run(lambda: self._conn.execute("SELECT subscription, mid, digest FROM delivered").fetchall())
        out: dict[str, dict[int, bytes]] = {}
        for sub, mid, digest in rows:
            out.setdefault(sub, {})[int(mid)] = bytes(digest)
        return out

    async def checkpoints(self) -> dict[str, dict[str, Any]]:
        rows = await self._run(lambda: self._conn.execute("SELECT subscription, state FROM checkpoints").fetchall())
        return {sub: orjson.loads(state) for sub, state in rows}

    async def remember_specs(self, specs: dict[str, dict[str, Any]]) -> None:
        """Keep the spec of each subscription revision run (``name@revision`` -> spec): what a checkpoint that
        no running subscription owns is emitted with at the next start (``edge_agent.orphans``)."""
        rows = [(key, orjson.dumps(spec)) for key, spec in specs.items()]

        def write() -> None:
            db = self._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO revisions (subscription, spec) VALUES (?, ?)", rows)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        await self._run(write)

    async def specs(self) -> dict[str, dict[str, Any]]:
        """Every spec remembered by ``remember_specs``."""
        rows = await self._run(lambda: self._conn.execute("SELECT subscription, spec FROM revisions").fetchall())
        return {key: orjson.loads(spec) for key, spec in rows}

    async def losses(self) -> dict[str, dict[str, int]]:
        """The loss ledger: subscription -> reason -> records given up."""
        rows = await self._run(lambda: self._conn.execute("SELECT subscription, reason, count FROM losses").fetchall())
        ledger: dict[str, dict[str, int]] = {}
        for sub, reason, count in rows:
            ledger.setdefault(sub, {})[reason] = int(count)
        return ledger

    async def integrity_check(self) -> str:
        return str(await self._run(lambda: self._conn.execute("PRAGMA integrity_check").fetchone()[0]))

    @property
    def pending(self) -> int:
        """Records waiting for the hub's acknowledgement."""
        return self._count
