"""``hub db``: the hub's database schema. A local command: it reads the hub's config and acts on its database.

``hub serve`` migrates the schema itself when it starts (``[store] migrate``, default true); operators who
prefer to migrate as a step of their own run ``hub db upgrade`` and set ``migrate = false``.
SQLAlchemy and Alembic load inside the commands: the CLI's import stays light (tests/unit/layout).
"""

from __future__ import annotations

import json

import typer

from hub.cli.common import AsJson, fail
from hub.cli.security import ConfigOpt, load_hub_config
from hub.errors import HubError

db_app = typer.Typer(
    help="The hub's database schema (local: acts on the database in the hub's config).", no_args_is_help=True
)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, as_json: AsJson = False) -> None:
    """Migrate the database to this hub's schema; safe while other replicas start (they wait for the lock)."""
    from hub.db.store import migrate

    cfg = load_hub_config(config)
    try:
        done = migrate(cfg.store.url)
    except HubError as exc:
        raise fail(f"hub: {exc}", 1) from None
    if as_json:
        typer.echo(json.dumps({"before": done.before, "after": done.after, "stamped": done.stamped}))
        return
    if done.stamped:
        typer.echo(f"database from before migrations: stamped at revision {done.before}")
    if done.before == done.after:
        typer.echo(f"schema at revision {done.after}: nothing to do")
    else:
        typer.echo(f"schema migrated: {done.before or 'empty'} -> {done.after}")


@db_app.command("current")
def db_current(config: ConfigOpt = None, as_json: AsJson = False) -> None:
    """Show the database's schema revision and this hub's (head); exit 1 when they differ."""
    from hub.db import migrations
    from hub.db.store import revision

    cfg = load_hub_config(config)
    try:
        found, head = revision(cfg.store.url), migrations.head()
    except HubError as exc:
        raise fail(f"hub: {exc}", 1) from None
    if as_json:
        typer.echo(json.dumps({"current": found, "head": head}))
    else:
        typer.echo(f"database: {found or 'none'}\nthis hub: {head}")
    if found != head:
        raise typer.Exit(1)
