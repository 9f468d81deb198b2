"""Removal of handler images this device no longer runs, after a grace period.

Only images that this agent ran as handlers are ever candidates (so base images and other agents' images
are never touched), the image each handler ran before its current one is kept for a rollback, and an image
still used by any container (another agent's, on a shared engine) is left alone: the engine refuses, and
that refusal is expected, not an error.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import docker
import docker.errors

from edge_protocol.clocks import STEADY_WALL

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    ref TEXT PRIMARY KEY,
    handler TEXT NOT NULL,
    started_at REAL NOT NULL,
    retired_at REAL
);
"""


class ImageLedger:
    """Which images this device's handlers used and when they stopped using them (SQLite, own file)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def in_use(self, handler: str, ref: str, now: float | None = None) -> None:
        """``handler`` runs ``ref`` from now on; the image it ran before is retired."""
        now = STEADY_WALL.now() if now is None else now
        with self._db:
            self._db.execute(
                "UPDATE images SET retired_at = ? WHERE handler = ? AND ref != ? AND retired_at IS NULL",
                (now, handler, ref),
            )
            self._db.execute(
                "INSERT INTO images (ref, handler, started_at) VALUES (?, ?, ?) "
                "ON CONFLICT(ref) DO UPDATE SET handler = excluded.handler, retired_at = NULL",
                (ref, handler, now),
            )

    def retired(self, handler: str, now: float | None = None) -> None:
        """``handler`` is gone altogether."""
        now = STEADY_WALL.now() if now is None else now
        with self._db:
            self._db.execute(
                "UPDATE images SET retired_at = ? WHERE handler = ? AND retired_at IS NULL", (now, handler)
            )

    def removable(self, grace: float, now: float | None = None) -> list[str]:
        """Images retired longer than ``grace`` ago, except each handler's most recently retired one."""
        now = STEADY_WALL.now() if now is None else now
        rows = self._db.execute(
            "SELECT ref, handler, retired_at FROM images WHERE retired_at IS NOT NULL ORDER BY retired_at DESC"
        ).fetchall()
        kept: set[str] = set()
        out = []
        for ref, handler, retired_at in rows:
            if handler not in kept:
                kept.add(handler)  # the previous release stays for a rollback
                continue
            if retired_at < now - grace:
                out.append(ref)
        return out

    def forget(self, ref: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM images WHERE ref = ?", (ref,))

    def close(self) -> None:
        self._db.close()


def collect_garbage(client: docker.DockerClient, ledger: ImageLedger, grace: float) -> list[str]:
    """Remove what ``ledger`` says may go; returns the references removed."""
    removed = []
    for ref in ledger.removable(grace):
        try:
            client.images.remove(ref)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            log.info("image %s kept: %s", ref, exc.explanation or exc)
            continue
        with contextlib.suppress(sqlite3.Error):
            ledger.forget(ref)
        removed.append(ref)
        log.info("removed unused image %s", ref)
    return removed
