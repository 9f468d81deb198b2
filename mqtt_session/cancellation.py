"""The one place that works around aiomqtt losing a cancellation on Python 3.11.

aiomqtt bounds its calls with ``asyncio.wait_for``, which on Python 3.11 returns the result instead of raising
when a cancellation lands in the same loop turn as the reply (cpython#86296): the task goes on, and a
TaskGroup that already cancelled it waits for it forever (a hung shutdown). So aiomqtt is told to wait
without a timeout (a plain await, which is cancelled properly) and :func:`bounded` bounds the call with
``asyncio.timeout``. Connecting and disconnecting still go through aiomqtt's ``wait_for``:
:func:`raise_lost_cancellation` re-raises what they swallowed. :class:`Calls` bounds the calls made on one
connection the same way and ends them all when that connection is lost.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

UNBOUNDED = math.inf
"""The aiomqtt call timeout that makes it await without ``wait_for``'s timeout."""


async def bounded(call: Awaitable[T], seconds: float) -> T:
    """Await ``call`` (made with ``timeout=UNBOUNDED``) for at most ``seconds``: TimeoutError after that."""
    async with asyncio.timeout(seconds):
        return await call


def raise_lost_cancellation() -> None:
    """Re-raise a cancellation that ``wait_for`` swallowed: a task that was asked to stop is still
    ``cancelling()`` after the swallow."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class CutShort(Exception):
    """A call ended by :meth:`Calls.cut`: the reply it waited for can no longer come."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Calls:
    """The calls waiting on one connection: each bounded like :func:`bounded`, all ended at once by :meth:`cut`.

    A reply that will never come (the connection it was asked on is gone) must not be waited for until the
    timeout. :meth:`cut` brings every waiting call's ``asyncio.timeout`` deadline forward to now, so the call
    is cancelled by the same mechanism as a timeout (nothing here cancels a task on its own) and raises
    :class:`CutShort` instead of TimeoutError. A caller cancelled by someone else meanwhile still gets its
    CancelledError (``asyncio.timeout`` counts the cancellations). Calls made after the cut fail at once.
    """

    def __init__(self) -> None:
        self._waiting: set[asyncio.Timeout] = set()
        self._cut: set[asyncio.Timeout] = set()
        self.reason: str | None = None
        """Why the calls were cut (None while they are not)."""

    async def bounded(self, call: Callable[[], Awaitable[T]], seconds: float) -> T:
        """Await ``call()`` (made with ``timeout=UNBOUNDED``) for at most ``seconds``: TimeoutError after that,
        :class:`CutShort` if :meth:`cut` comes first (or came before)."""
        if self.reason is not None:
            raise CutShort(self.reason)
        scope = asyncio.timeout(seconds)
        try:
            async with scope:
                self._waiting.add(scope)
                try:
                    # A reply that arrives before the cut takes effect still counts: it did come.
                    return await call()
                finally:
                    self._waiting.discard(scope)
        except TimeoutError:
            if scope in self._cut:
                raise CutShort(self.reason or "cut") from None
            raise
        finally:
            self._cut.discard(scope)

    def cut(self, reason: str) -> None:
        """End every call waiting now, and fail every later one (the first reason stays)."""
        if self.reason is not None:
            return
        self.reason = reason
        now = asyncio.get_running_loop().time()
        for scope in self._waiting:
            if not scope.expired():  # one that expired already raises its own TimeoutError
                scope.reschedule(now)
                self._cut.add(scope)
