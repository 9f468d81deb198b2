"""``hub device provision`` and ``hub device revoke``: local commands run on the hub's host.

They use the hub's config (``--config``): its CA directory, its database and its broker account, which
may send the dynamic-security plugin's commands. They connect with their own client id, so a running
``hub serve`` keeps its connection. The store, broker and provisioner are imported when a command runs: the
CLI's HTTP commands must start without them (tests/unit/layout).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from hub.cli.common import fail
from hub.cli.security import ConfigOpt, load_ca, load_hub_config
from hub.config import HubConfig
from hub.errors import ConfigError, HubError
from hub.fleet.labels import LabelError, parse_assignments

if TYPE_CHECKING:
    from hub.security.provisioning import Provisioner

T = TypeVar("T")
BROKER_TIMEOUT = 10.0
BrokerOpt = Annotated[
    bool,
    typer.Option(
        "--broker/--no-broker",
        help="tell the broker's dynamic-security plugin; --no-broker for static password/ACL files",
    ),
]


def _with_provisioner(cfg: HubConfig, action: Callable[[Provisioner], Awaitable[T]], *, broker: bool) -> T:
    """Run ``action`` with a provisioner on the config's store, CA and (when ``broker``) broker; exit 1 with
    the reason on failure."""
    from hub.db.store import Store
    from hub.mqtt.broker import Broker
    from hub.security.dynsec import Dynsec, DynsecError
    from hub.security.provisioning import Provisioner
    from mqtt_session import Backoff

    ca = load_ca(cfg.provisioning.ca_dir)
    broker_cfg = cfg.broker.model_copy(update={"client_id": f"{cfg.broker.client_id}-admin-{secrets.token_hex(3)}"})

    async def main() -> T:
        if not broker:
            async with Store(cfg.store.url) as store:
                return await action(Provisioner(cfg, store, None, ca))
        async with Store(cfg.store.url) as store, Broker(broker_cfg, backoff=Backoff(0.2, 1.0)) as connection:
            try:
                return await action(Provisioner(cfg, store, Dynsec(connection, timeout=BROKER_TIMEOUT), ca))
            except DynsecError as exc:
                last = connection.last_error if not connection.connected else None
                why = f" (last error: {last})" if last else ""
                raise DynsecError(f"broker {broker_cfg.host}:{broker_cfg.port}: {exc}{why}") from exc

    try:
        return asyncio.run(main())
    except (HubError, OSError, ExceptionGroup) as exc:
        # The broker's task group wraps what the action raised.
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, ConfigError):
            raise fail("hub: " + "; ".join(leaf.errors), 2) from None
        if isinstance(leaf, HubError | OSError):
            raise fail(f"hub: {leaf}", 1) from None
        raise


def provision(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="the device id (certificate CN, broker username)")],
    labels: Annotated[
        list[str] | None, typer.Option("--labels", "--label", help="k=v labels (repeatable, or comma-separated)")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="where to write the device's files (default: ./ID)")] = None,
    install_dir: Annotated[
        Path, typer.Option("--install-dir", help="where the files will be on the device (paths in agent.toml)")
    ] = Path("/etc/edgefleet"),
    password: Annotated[
        bool, typer.Option("--password", help="a username/password instead of a certificate (no client-cert auth)")
    ] = False,
    broker: BrokerOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Issue a device's certificate (or password), grant it its own topics at the broker, register it with its
    labels, and write agent.toml + ca.crt + hub-signing.pub (+ device.crt/.key) ready to copy to the device."""
    try:
        to_set = parse_assignments([term for value in labels or [] for term in value.split(",") if term])
    except LabelError as exc:
        raise fail(f"--labels: {exc}") from None
    cfg = load_hub_config(config)
    where = out or Path(device_id)
    done = _with_provisioner(
        cfg, lambda p: p.provision(device_id, to_set, where, install_dir.absolute(), password=password), broker=broker
    )
    cred = done.credential
    what = f"certificate {cred.serial}" if cred.serial else "broker password"
    typer.echo(f"provisioned {device_id}: {what}; labels {','.join(f'{k}={v}' for k, v in done.labels.items()) or '-'}")
    for path in done.files:
        typer.echo(f"  {path}")
    typer.echo(f"copy {where}/ to {install_dir}/ on the device, then: edge-agent --config {install_dir}/agent.toml")


def revoke(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="the device")],
    broker: BrokerOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Cut a device off now: disable it at the broker (its connection drops), delete its rights, mark its
    credentials revoked and rewrite the CRL (then reload the broker with SIGHUP to refuse its certificate)."""
    cfg = load_hub_config(config)
    done = _with_provisioner(cfg, lambda p: p.revoke(device_id), broker=broker)
    serials = [c.serial for c in done.credentials if c.serial]
    where = "disabled at the broker" if broker else "the broker was not told (--no-broker)"
    typer.echo(f"revoked {device_id}: {where}; {len(done.credentials)} credential(s) marked revoked")
    if serials:
        typer.echo(f"CRL {done.crl} now lists {', '.join(serials)}: reload the broker (SIGHUP) to refuse it at TLS")


def register(device_app: typer.Typer) -> None:
    """Add ``provision`` and ``revoke`` to the ``hub device`` group."""
    device_app.command("provision")(provision)
    device_app.command("revoke")(revoke)
