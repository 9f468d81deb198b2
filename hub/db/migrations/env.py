"""Alembic's environment for the hub's migrations: run on the connection :mod:`hub.db.migrations` passes.

That module holds the schema lock and the transaction; this file only hands the connection to Alembic. The
target metadata (today's tables) is what ``python -m hub.db.migrations revision`` compares a new revision with.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from hub.db.tables import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("the hub's migrations run through hub.db.migrations (`hub db upgrade`), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    transactional_ddl=True,  # SQLite too: the caller's BEGIN IMMEDIATE makes its DDL one transaction
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters most things by copying the table
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
