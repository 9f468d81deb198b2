"""The one place that works around aiomqtt losing a cancellation on Python 3.11.

aiomqtt bounds its calls with ``asyncio.wait_for``, which on Python 3.11 returns the result instead of raising
when a cancellation lands in the same loop turn as the reply (cpython#86296): the task goes on, and a
TaskGroup that already cancelled it waits for it forever (a hung shutdown). So aiomqtt is told to wait
without a timeout (a plain await, which is cancelled properly) and :func:`bounded` bounds the call with
``asyncio.timeout``. Connecting and disconnecting still go through aiomqtt's ``wait_for``:
:func:`raise_lost_cancellation` re-raises what they swallowed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
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
