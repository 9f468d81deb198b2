"""The agent's local status endpoint, on a loopback address only ([status] listen):

- ``GET /metrics``: Prometheus text (the collector in :mod:`edge_agent.metrics`)
- ``GET /status``: the reported state as JSON (what ``edge-agent status`` shows)
- ``GET /healthz``: 200 while the event loop answers within 2 s, intake is connected and no handler is
  marked failed; 503 with the reasons otherwise (for a systemd watchdog or a container healthcheck)

A standard-library threaded HTTP server: the hot path pays nothing, and requests that need the agent's state
are run on its event loop with a deadline, so a stuck loop shows as unhealthy instead of hanging the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry

from edge_agent.config import parse_listen
from edge_agent.metrics import AgentCollector

if TYPE_CHECKING:
    from edge_agent.state import AgentState

log = logging.getLogger(__name__)


class StatusServer:
    """Serves the endpoint from its own thread until ``shutdown()``."""

    def __init__(self, state: AgentState, device_id: str, listen: str, loop: asyncio.AbstractEventLoop) -> None:
        host, port = parse_listen(listen)
        registry = CollectorRegistry()
        registry.register(AgentCollector(state))
        handler = _handler_class(state, device_id, registry, loop)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = Thread(target=self._server.serve_forever, name="agent.status", daemon=True)
        self._thread.start()
        self.address = f"http://{host}:{self._server.server_address[1]}"
        log.info("status endpoint on %s (/status, /healthz, /metrics)", self.address)

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def health(state: AgentState) -> list[str]:
    """Why the agent is unhealthy; empty when it is healthy."""
    problems = []
    if state.intake is None or not state.intake.connected:
        problems.append("not connected to the local broker")
    problems += [f"handler {name} failed" for name, r in state.runtimes.items() if r.state == "failed"]
    problems += [f"alarm {name}" for name in sorted(state.alarms)]
    return problems


def _handler_class(
    state: AgentState, device_id: str, registry: CollectorRegistry, loop: asyncio.AbstractEventLoop
) -> type[BaseHTTPRequestHandler]:
    def on_loop(coro: Any, timeout: float = 2.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def check() -> list[str]:
        return health(state)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                if self.path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path == "/status":
                    # A read: it must not end the lag interval the next published report carries.
                    report = on_loop(state.reported(device_id, publish=False), timeout=5.0)
                    self._send(200, report.model_dump_json().encode(), "application/json")
                elif self.path == "/healthz":
                    problems = on_loop(check())
                    body = json.dumps({"healthy": not problems, "problems": problems}).encode()
                    self._send(503 if problems else 200, body, "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")
            except TimeoutError:
                stuck = json.dumps({"healthy": False, "problems": ["the agent's event loop did not answer"]})
                self._send(503, stuck.encode(), "application/json")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("status endpoint: " + fmt, *args)

    return Handler
