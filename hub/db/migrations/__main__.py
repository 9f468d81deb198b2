"""``python -m hub.db.migrations revision "what changed"``: draft the next revision from the tables (developers).

Builds a scratch SQLite database at head, compares it with :mod:`hub.db.tables` and writes
``versions/NNNN_what_changed.py`` with the operations found; review it (names, data, PostgreSQL) before commit.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from hub.db import migrations


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "revision":
        print('usage: python -m hub.db.migrations revision "what changed"', file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
        try:
            migrations.upgrade(engine)
            with engine.connect() as conn:
                number = f"{int(migrations.head()) + 1:04d}"
                command.revision(migrations.config(conn), message=argv[1], autogenerate=True, rev_id=number)
        finally:
            engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
