"""Everything a desired document's new handler versions must pass before anything switches, and its trial after.

A document is applied all-or-nothing (``Pipeline.apply``): every new or changed handler is first pulled (all of
them, before any starts), then started and health-checked. The first step that fails refuses the whole document
(:class:`UpdateRefused`, with the step and the reason); every runtime started for it is closed, and the device
runs on exactly as before. After the switch the document is on trial (:class:`Trial`) for the probation time:
what it replaced (runtimes and dispatchers) stays up, and a crash-loop of any new runtime puts all of it back.

``pause_at`` is a test hook, off unless ``EDGE_AGENT_PAUSE_AT`` names a step: the fault tests SIGKILL the agent
while it waits there (``tests/faults/test_desired_crash.py``). It is awaited once per applied document, never on
the event path.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.dispatcher import Dispatcher
from edge_agent.runtime.base import HandlerRuntime
from edge_protocol.specs import HandlerSpec

log = logging.getLogger(__name__)

Step = Literal["pull", "start", "health", "probation"]
Pull = Callable[[HandlerSpec], Awaitable[None]]

PAUSE_ENV = "EDGE_AGENT_PAUSE_AT"
"""Names a pause point (``after-pull``, ``after-start``, ``mid-switch``, ``probation``): tests only."""
PAUSE_MARKER = "test pause point reached:"
PAUSE_POINTS = ("after-pull", "after-start", "mid-switch", "probation")


async def pause_at(point: str) -> None:
    """Log ``PAUSE_MARKER point`` and wait for ever when ``EDGE_AGENT_PAUSE_AT`` names ``point``; else nothing."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    log.warning("%s %s (%s is set: waiting to be killed)", PAUSE_MARKER, point, PAUSE_ENV)
    await asyncio.Event().wait()


class UpdateRefused(Exception):
    """A document's handler failed a step before or after the switch; the document is not (or no longer) run.

    ``transient``: the failure says nothing about the document (a registry or network that did not answer a
    pull), so the version is worth trying again later; every other refusal is for cause."""

    def __init__(self, step: Step, handler: str, image: str, reason: str, *, transient: bool = False) -> None:
        super().__init__(f"{step}: handler {handler} ({image}): {reason}")
        self.step: Step = step
        self.handler = handler
        self.image = image
        self.reason = reason
        self.transient = transient


TRANSIENT_PULL_ERRORS = (
    "connection refused",
    "connection reset",
    "no such host",
    "temporary failure in name resolution",
    "network is unreachable",
    "no route to host",
    "i/o timeout",
    "tls handshake timeout",
    "timed out",
    "deadline exceeded",
    "unexpected eof",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
    "too many requests",
    "toomanyrequests",
)
"""What the engine says when a registry could not be reached or answered for the moment (lower case)."""


def transient_pull_failure(exc: BaseException) -> bool:
    """A pull that failed for a passing reason: the engine or the registry unreachable, a network error. A layer
    failing its digest check, an unknown manifest or a refused authorisation are for cause."""
    if isinstance(exc, OSError | TimeoutError):  # requests' connection errors are OSErrors too
        return True
    text = str(exc).lower()
    return any(pattern in text for pattern in TRANSIENT_PULL_ERRORS)


@dataclass(slots=True)
class Trial:
    """A switched document on probation, and the last good state it would go back to.

    ``base_*`` is what ran before the trial began (the last good document); those runtimes and dispatchers stay
    up, out of service, until the trial ends. ``watched`` holds each runtime on trial with its restart count
    when it took over. ``tag`` names the document on trial for the caller (its version); a newer document
    applied during a trial joins it (its tag replaces the earlier one, the clock starts again).
    """

    base_specs: dict[str, HandlerSpec]
    base_runtimes: dict[str, HandlerRuntime]
    base_dispatchers: dict[str, Dispatcher]
    until: float
    tag: object = None
    watched: dict[str, tuple[HandlerRuntime, int]] = field(default_factory=dict)

    def keeps(self, runtime: HandlerRuntime) -> bool:
        return any(runtime is r for r in self.base_runtimes.values())

    def keeps_dispatcher(self, dispatcher: Dispatcher) -> bool:
        return any(dispatcher is d for d in self.base_dispatchers.values())

    def crash_looping(self) -> UpdateRefused | None:
        """The first runtime on trial that restarted or failed since it took over, as a refusal."""
        for name, (runtime, restarts) in self.watched.items():
            if runtime.restarts > restarts or runtime.state == "failed":
                n = runtime.restarts - restarts
                return UpdateRefused(
                    "probation", name, runtime.spec.image, f"crash-loop: {n} restarts within the probation time"
                )
        return None


@dataclass(frozen=True, slots=True)
class TrialEnd:
    """How a trial ended: ``refusal`` None when it passed (the document is good), else why it was reverted."""

    tag: object
    refusal: UpdateRefused | None


async def start_checked(runtime: HandlerRuntime, health_timeout: float) -> tuple[Step, str] | None:
    """None when ``runtime`` started and answered a health ping in time, else the step and why not."""
    try:
        await runtime.start()
    except Exception as exc:  # any start failure refuses the update; its text is the reported reason
        return "start", f"start failed: {exc}"
    try:
        async with asyncio.timeout(health_timeout):
            if await runtime.ping():
                return None
    except TimeoutError:
        pass
    return "health", f"no answer to the health ping within {health_timeout:g}s"


async def stage(
    changed: list[HandlerSpec],
    factory: Callable[[HandlerSpec], HandlerRuntime],
    pull: Pull | None,
    health_timeout: float,
) -> dict[str, HandlerRuntime]:
    """Pull, start and health-check every spec in ``changed``: their runtimes, ready to switch to; or
    :class:`UpdateRefused` at the first failure, with everything started here closed again."""
    if pull is not None:
        for spec in changed:
            try:
                await pull(spec)
            except Exception as exc:  # the engine's or the registry's error is the reported reason
                transient = transient_pull_failure(exc)
                raise UpdateRefused("pull", spec.name, spec.image, str(exc), transient=transient) from exc
    await pause_at("after-pull")
    started: dict[str, HandlerRuntime] = {}
    try:
        for spec in changed:
            runtime = started[spec.name] = factory(spec)
            problem = await start_checked(runtime, health_timeout)
            if problem is not None:
                raise UpdateRefused(problem[0], spec.name, spec.image, problem[1])
        await pause_at("after-start")
    except BaseException:
        await asyncio.gather(*(r.aclose() for r in started.values()), return_exceptions=True)
        raise
    return started


async def start_anyway(
    changed: list[HandlerSpec], factory: Callable[[HandlerSpec], HandlerRuntime], health_timeout: float
) -> dict[str, HandlerRuntime]:
    """Start every spec in ``changed``, switched to whether it answers or not (a stored or configured state at
    start-up: there is nothing older to stay on; the runtime's own restarts keep trying)."""
    started: dict[str, HandlerRuntime] = {}
    for spec in changed:
        runtime = started[spec.name] = factory(spec)
        problem = await start_checked(runtime, health_timeout)
        if problem is not None:
            log.error("handler %s did not start (%s); its events are retried and dead-lettered", spec.name, problem[1])
    return started
