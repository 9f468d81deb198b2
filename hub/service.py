"""``hub serve``: the store, the broker connection, ingest and the HTTP API, wired together.

Installs no signal handlers (only the CLI does), so tests run :func:`serve` directly and stop it by cancelling.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Coroutine, Iterator
from typing import Any

import uvicorn

from edge_protocol.topics import Topics
from hub.api.app import create_app
from hub.config import HubConfig
from hub.db.store import Store
from hub.desired.documents import DesiredStore
from hub.desired.keys import load_signing_key
from hub.desired.publisher import DesiredPublisher
from hub.desired.renewal import Renewal
from hub.errors import ConfigError, HubError
from hub.ingest.consumer import Ingest
from hub.leases import Fence, Leases, Singleton
from hub.mqtt.broker import Broker
from hub.rollouts.controller import RolloutController
from hub.security.tokens import Tokens

log = logging.getLogger(__name__)

API_SHUTDOWN_GRACE = 5
"""Seconds open HTTP requests get to finish when the hub stops."""


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling, and with an event for "listening"."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would replace SIGINT/SIGTERM handlers and re-raise the signal after shutdown; the hub's
        # CLI owns signals and stops us by cancellation (uvicorn >= 0.29 calls this instead of
        # install_signal_handlers).
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


def _bind(host: str, port: int) -> socket.socket:
    # Binding ourselves turns "address in use" into a HubError here, where uvicorn would sys.exit(), and
    # lets port 0 pick a free port.
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _name, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise HubError(f"API address {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise HubError(f"API cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


async def _run_api(server: _ApiServer, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except asyncio.CancelledError:
        # Cancelled in uvicorn's main loop, which would skip its shutdown: stop listening and let requests
        # in flight finish (bounded by timeout_graceful_shutdown) before we go.
        if server.started:
            server.should_exit = True
            await server.shutdown(sockets=[sock])
        raise
    finally:
        sock.close()


async def _announce_ready(server: _ApiServer, ingest: Ingest, ready: asyncio.Event | None, address: str) -> None:
    await server.listening.wait()
    await ingest.ready.wait()
    log.info("hub ready: API on %s, ingest subscribed", address)
    if ready is not None:
        ready.set()


async def _check_api_auth(config: HubConfig, store: Store, token: str | None) -> None:
    """Lock the API for good when a token is configured; refuse to offer an API that never had a token to the
    network (a loopback dev hub may stay open); warn when the API is closed and no token opens it."""
    tokens = Tokens(store)
    if token is not None:
        await asyncio.to_thread(tokens.lock, "the [api] token was configured")
    if await asyncio.to_thread(tokens.locked):
        await asyncio.to_thread(tokens.lock, "tokens existed before the lock row")  # an older database
        if token is None and await asyncio.to_thread(tokens.count) == 0:
            log.warning("the API is closed and no token opens it (the last one was revoked): `hub token create NAME`")
        return
    host = config.api.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError([f"api.host: the API on {host} would be open to anyone: `hub token create NAME` first"])
    log.warning("the API is open: this hub never had a token (`hub token create NAME` locks it for good)")


def _singletons(store: Store, publisher: DesiredPublisher | None) -> list[Singleton]:
    """The jobs that one replica at a time runs, each under its lease (docs/decisions.md, "one controller").

    The publishing loop is not one of them: every replica publishes what its own requests compiled at once."""
    if publisher is None:
        return []
    leases = Leases(store)

    def controller(fence: Fence) -> Coroutine[Any, Any, None]:
        return RolloutController(store, publisher, fence=fence).run()

    jobs = [Singleton(leases, "rollouts", controller)]
    if publisher.desired.validity > 0:
        renewal = Renewal(publisher.desired, wake=publisher.wake)
        jobs.append(Singleton(leases, "desired-renewal", lambda _fence: renewal.run()))
    return jobs


async def serve(config: HubConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run the hub until cancelled; ``ready`` is set once the API listens and ingest is subscribed."""
    topics = Topics(config.broker.prefix)
    token = config.api.token.get_secret_value() if config.api.token else None
    key_path = config.signing.private_key
    key = load_signing_key(key_path) if key_path is not None else None
    async with Store(config.store.url, migrate=config.store.migrate) as store, Broker(config.broker) as broker:
        await _check_api_auth(config, store, token)
        desired = DesiredStore(store, key, validity=config.desired.validity) if key is not None else None
        publisher = DesiredPublisher(desired, broker, topics) if desired is not None else None
        singletons = _singletons(store, publisher)
        sock = _bind(config.api.host, config.api.port)
        host, port = sock.getsockname()[:2]
        address = f"http://{host}:{port}"
        server = _ApiServer(
            uvicorn.Config(
                create_app(store, token, desired=publisher, leases=lambda: [s.name for s in singletons if s.held]),
                lifespan="off",
                log_config=None,  # keep the process's logging setup; uvicorn's would replace it
                access_log=False,
                timeout_graceful_shutdown=API_SHUTDOWN_GRACE,
            )
        )
        ingest = Ingest(store, broker, topics, desired=publisher)
        log.info(
            "hub starting: broker mqtt://%s:%d, prefix %r, store %s",
            config.broker.host,
            config.broker.port,
            config.broker.prefix,
            store.display_url,
        )
        if publisher is None:
            log.warning("no [signing] private_key: no desired state is published, spec changes are refused")
        else:
            log.info("signing desired state with key %s (%s)", publisher.desired.key_id, key_path)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(ingest.run(), name="hub.ingest")
            if publisher is not None:
                tasks.create_task(publisher.run(), name="hub.desired")
            for singleton in singletons:
                tasks.create_task(singleton.run(), name=f"hub.lease.{singleton.name}")
            tasks.create_task(_run_api(server, sock), name="hub.api")
            tasks.create_task(_announce_ready(server, ingest, ready, address), name="hub.ready")
