"""``hub keys init``: make the hub's signing key pair. A local command: it does not talk to the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hub.cli.common import AsJson, fail

keys_app = typer.Typer(help="The key that signs desired state.", no_args_is_help=True)


@keys_app.command("init")
def keys_init(
    directory: Annotated[Path, typer.Option("--dir", help="directory for hub-signing.key/.pub")] = Path(),
    force: Annotated[bool, typer.Option("--force", help="replace an existing key pair")] = False,
    as_json: AsJson = False,
) -> None:
    """Make an Ed25519 key pair: the private key for the hub's [signing] config, the public key for agents."""
    # Here, not at the top: cryptography is for this command alone, not for every start of the CLI.
    from hub.desired.keys import KeysExist, init_keys

    try:
        pair = init_keys(directory, force=force)
    except KeysExist as exc:
        raise fail(f"hub: {exc}", 1) from None
    except OSError as exc:
        raise fail(f"hub: cannot write the key pair in {directory}: {exc.strerror or exc}", 1) from None
    if as_json:
        info = {
            "private_key": str(pair.private_path),
            "public_key": str(pair.public_path),
            "key_id": pair.key_id,
            "public_key_pem": pair.public_pem,
        }
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"private key: {pair.private_path} (mode 0600; set [signing] private_key to it, keep it on the hub)")
    typer.echo(f"public key:  {pair.public_path} (give it to the agents)")
    typer.echo(f"key id:      {pair.key_id}")
    typer.echo(pair.public_pem, nl=False)
