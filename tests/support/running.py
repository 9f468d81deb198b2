"""Run the real agent and hub in-process for integration tests, and wait on conditions with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from edge_agent.agent import serve
from edge_agent.config import AgentConfig
from edge_agent.state import AgentState
from hub.config import HubConfig
from hub.service import serve as hub_serve
from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "",
    detail: Callable[[], object] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` (and ``detail()``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            extra = f"; {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition}{extra}")
        await asyncio.sleep(interval)


def pending_tasks() -> str:
    """The stack of every unfinished task on this loop: what a hung shutdown is waiting for."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        if not task.done() and task is not asyncio.current_task():
            task.print_stack(limit=8, file=out)
    return out.getvalue()


async def cancel_and_wait(task: asyncio.Task[Any], *, timeout: float = 15.0, what: str = "the task") -> None:
    """Cancel ``task`` and wait for it to finish, failing with every pending task's stack after ``timeout``.

    ``asyncio.wait`` neither cancels the task again on our own cancellation nor loses one, unlike awaiting
    the task itself."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        raise AssertionError(f"{what} did not stop within {timeout:g}s of its cancellation:\n{pending_tasks()}")
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig, **kwargs: Any) -> AsyncIterator[tuple[AgentState, asyncio.Task[None]]]:
    """The agent's ``serve()`` as a task; stopped (two-phase) and awaited on exit."""
    state = AgentState()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(config, stop=stop, ready=ready, state=state, **kwargs), name="test.agent")
    try:
        await wait_for(lambda: ready.is_set() or task.done(), timeout=60, what="agent ready")
        if task.done():
            task.result()
        yield state, task
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:
            stuck = pending_tasks()
            await cancel_and_wait(task, what="the agent")
            raise AssertionError(f"the agent did not stop within 30s of its stop event:\n{stuck}")
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


class Fleet:
    """Agents in-process (:func:`running_agent`), started and stopped by device id."""

    def __init__(self, configs: dict[str, AgentConfig]) -> None:
        self.configs = configs
        self.states: dict[str, AgentState] = {}
        self._stacks: dict[str, contextlib.AsyncExitStack] = {}

    async def start(self, device: str) -> AgentState:
        stack = contextlib.AsyncExitStack()
        state, _task = await stack.enter_async_context(running_agent(self.configs[device]))
        self._stacks[device], self.states[device] = stack, state
        return state

    async def stop(self, device: str) -> None:
        await self._stacks.pop(device).aclose()

    async def aclose(self) -> None:
        for device in list(self._stacks):
            await self.stop(device)


@contextlib.asynccontextmanager
async def fleet_of(configs: dict[str, AgentConfig]) -> AsyncIterator[Fleet]:
    """Every agent of ``configs`` started at once; all stopped at exit."""
    fleet = Fleet(configs)
    try:
        await asyncio.gather(*(fleet.start(d) for d in configs))
        yield fleet
    finally:
        await fleet.aclose()


def hub_config(cloud: Mosquitto, prefix: str, db: Path, *, token: str | None = None, **sections: Any) -> HubConfig:
    """A hub on ``cloud`` under ``prefix`` with its SQLite store at ``db`` and its API on a free loopback port;
    ``token`` is the API's bearer token, ``sections`` (``signing={...}``) are further config sections."""
    api: dict[str, Any] = {"host": "127.0.0.1", "port": free_port()}
    if token is not None:
        api["token"] = token
    return HubConfig(
        broker={"host": cloud.host, "port": cloud.port, "prefix": prefix, "client_id": f"hub-{uuid.uuid4().hex[:8]}"},
        store={"url": f"sqlite:///{db}"},
        api=api,
        **sections,
    )


@contextlib.asynccontextmanager
async def serving_hub(config: HubConfig) -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    """The hub's ``serve(config)`` as a task until ready: yields its API's URL and the task; cancelled and
    awaited at exit."""
    ready = asyncio.Event()
    task = asyncio.create_task(hub_serve(config, ready=ready), name="test.hub")
    try:
        await wait_for(lambda: ready.is_set() or task.done(), timeout=30, what="hub ready")
        if task.done():
            task.result()  # serve() failed: raise its error here
        assert ready.is_set(), "the hub stopped before it was ready"
        yield f"http://{config.api.host}:{config.api.port}", task
    finally:
        await cancel_and_wait(task, what="the hub")


@contextlib.asynccontextmanager
async def running_hub(
    cloud: Mosquitto, prefix: str, db: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, asyncio.Task[None]]]:
    """A hub with :func:`hub_config`'s defaults and an API client on it (no token); see :func:`serving_hub`."""
    async with (
        serving_hub(hub_config(cloud, prefix, db)) as (url, task),
        httpx.AsyncClient(base_url=url, timeout=10) as api,
    ):
        yield api, task
