"""``hub ca``, ``hub broker init-dynsec`` and ``hub token``: local commands run on the hub's host.

They read the hub's config (``--config``, like ``hub serve``) and act on its files and database directly:
the CA key never goes through the API, and the first API token cannot need a token.

Each command imports the store, the CA and the broker tools it uses inside its function: the CLI's other
commands talk HTTP only and must start without SQLAlchemy or cryptography (tests/unit/layout).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge_protocol.topics import Topics
from hub.cli.common import AsJson, fail
from hub.config import HubConfig
from hub.errors import ConfigError, HubError

if TYPE_CHECKING:
    from hub.security.ca import CertificateAuthority

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="the hub's TOML config; EDGEFLEET_HUB_* variables override it")
]
DirOpt = Annotated[Path | None, typer.Option("--dir", help="the CA directory (default: [provisioning] ca_dir)")]

ca_app = typer.Typer(help="The fleet's certificate authority (local: run it where its key is).", no_args_is_help=True)
broker_app = typer.Typer(help="The cloud broker's authorization.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens, stored hashed (local: acts on the hub's database).", no_args_is_help=True)


def load_hub_config(path: Path | None) -> HubConfig:
    """The hub's config, or exit 2 listing its problems."""
    try:
        return HubConfig.load(path)
    except ConfigError as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None


def load_ca(directory: Path) -> CertificateAuthority:
    from hub.security.ca import CaError, CertificateAuthority

    try:
        return CertificateAuthority.load(directory)
    except CaError as exc:
        raise fail(f"hub: {exc}", 1) from None


@ca_app.command("init")
def ca_init(
    directory: DirOpt = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing CA")] = False,
    config: ConfigOpt = None,
) -> None:
    """Make the CA: ca.key (0600), ca.crt (10 years, EC P-256) and an empty crl.pem."""
    from hub.security.ca import CaError, CertificateAuthority

    where = directory or load_hub_config(config).provisioning.ca_dir
    try:
        ca = CertificateAuthority.init(where, force=force)
        crl = ca.write_crl([])
    except (CaError, OSError) as exc:
        raise fail(f"hub: {exc}", 1) from None
    typer.echo(f"CA certificate: {ca.cert_path} (the broker's cafile, the agents' tls_ca)")
    typer.echo(f"CA key:         {where / 'ca.key'} (mode 0600; keep it on the hub)")
    typer.echo(f"CRL:            {crl} (the broker's crlfile)")


@ca_app.command("server-cert")
def ca_server_cert(
    host: Annotated[list[str], typer.Option("--host", help="an IP address or DNS name of the broker (repeatable)")],
    directory: DirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Issue the cloud broker's certificate (server.crt, server.key) with these subjectAltNames."""
    from hub.security.ca import CaError

    ca = load_ca(directory or load_hub_config(config).provisioning.ca_dir)
    try:
        cert, key = ca.write_server(ca.issue_server(host))
    except (CaError, OSError) as exc:
        raise fail(f"hub: {exc}", 1) from None
    typer.echo(f"broker certificate: {cert}\nbroker key:         {key} (mode 0600)")


@ca_app.command("crl")
def ca_crl(directory: DirOpt = None, config: ConfigOpt = None) -> None:
    """Rewrite crl.pem from the hub's database; then SIGHUP the broker (it reads the CRL at start and on HUP)."""
    from hub.db.store import Store
    from hub.security import credentials
    from hub.security.ca import CRL_DAYS

    cfg = load_hub_config(config)
    ca = load_ca(directory or cfg.provisioning.ca_dir)
    try:
        with Store(cfg.store.url) as store:
            listed = credentials.revoked_certificates(store, time.time())
        path = ca.write_crl(listed)
    except (HubError, OSError) as exc:
        raise fail(f"hub: {exc}", 1) from None
    typer.echo(f"{path}: {len(listed)} revoked certificate(s), valid {CRL_DAYS} days; reload the broker (SIGHUP)")


@broker_app.command("init-dynsec")
def broker_init_dynsec(
    file: Annotated[Path, typer.Option("--file", help="the plugin's config file (plugin_opt_config_file)")],
    force: Annotated[bool, typer.Option("--force", help="replace an existing file")] = False,
    config: ConfigOpt = None,
) -> None:
    """Write the dynamic-security plugin's initial file: default deny, the hub role and the hub's client.

    The hub's username and password are [broker] username (default "hub") and password; without a password
    one is generated and printed once. Start the broker after this; devices are added by `hub device provision`.
    """
    from hub.security import dynsec

    cfg = load_hub_config(config)
    username = cfg.broker.username or dynsec.DEFAULT_HUB_USERNAME
    given = cfg.broker.password.get_secret_value() if cfg.broker.password else None
    password = given or secrets.token_urlsafe(24)
    try:
        dynsec.write_initial(file, Topics(cfg.broker.prefix), username, password, force=force)
    except FileExistsError:
        raise fail(f"hub: {file} exists: pass --force to replace it (it holds every device's access)", 1) from None
    except OSError as exc:
        raise fail(f"hub: cannot write {file}: {exc.strerror or exc}", 1) from None
    typer.echo(f"{file}: default deny, role {dynsec.HUB_ROLE!r}, client {username!r} (0600: chown it to the broker)")
    if given is None:
        typer.echo(f"hub broker password (shown once): {password}")
        typer.echo(f"give it to the hub: [broker] username = {json.dumps(username)}, EDGEFLEET_HUB_BROKER__PASSWORD")


@token_app.command("create")
def token_create(name: Annotated[str, typer.Argument(help="who or what uses it")], config: ConfigOpt = None) -> None:
    """Make an API token: printed once on stdout; the hub keeps only its SHA-256."""
    from hub.db.store import Store
    from hub.security.tokens import Tokens

    cfg = load_hub_config(config)
    try:
        with Store(cfg.store.url) as store:
            token, _info = Tokens(store).create(name)
    except HubError as exc:
        raise fail(f"hub: {exc}", 1) from None
    typer.echo(token)
    typer.echo("store it now: it cannot be shown again (EDGEFLEET_HUB_TOKEN, or token in hub-cli.toml)", err=True)


@token_app.command("list")
def token_list(config: ConfigOpt = None, as_json: AsJson = False) -> None:
    """The stored tokens: name, first characters, creation time."""
    from hub.db.store import Store
    from hub.security.tokens import Tokens

    cfg = load_hub_config(config)
    try:
        with Store(cfg.store.url) as store:
            infos = Tokens(store).list_tokens()
    except HubError as exc:
        raise fail(f"hub: {exc}", 1) from None
    if as_json:
        typer.echo(json.dumps([{"name": i.name, "hint": i.hint, "created_at": i.created_at} for i in infos], indent=2))
        return
    for info in infos:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created_at))
        typer.echo(f"{info.name}\t{info.hint}...\t{created}")
    if not infos:
        typer.echo("no tokens", err=True)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="the token's name")], config: ConfigOpt = None) -> None:
    """Delete a token: the API refuses it from the next request. Revoking the last one leaves the API closed
    (it never opens again once the hub has had a token): create another first to keep access."""
    from hub.db.store import Store
    from hub.security.tokens import CLOSED_AFTER_LAST_REVOKE, Tokens

    cfg = load_hub_config(config)
    try:
        with Store(cfg.store.url) as store:
            revoked = Tokens(store).revoke(name)
    except HubError as exc:
        raise fail(f"hub: {exc}", 1) from None
    if revoked is None:
        raise fail(f"hub: no token named {name!r}", 1)
    typer.echo(f"revoked {name}")
    if revoked.remaining == 0:
        typer.echo(f"warning: {CLOSED_AFTER_LAST_REVOKE}", err=True)
