"""Stop signals for an event loop that runs aiomqtt clients, delivered even when the loop's self-pipe is full.

``loop.add_signal_handler`` passes a signal to the loop as one byte written to the loop's self-pipe by the C
signal handler. aiomqtt writes a byte to the same pipe each time it asks the loop to watch a socket for writing
(``call_soon_threadsafe(loop.add_writer, ...)``), and a Unix socket takes only a few hundred one-byte writes
before it is full. With many busy clients in one loop (2,500 simulated devices, a hub under a flood), the pipe
fills between two reads of it. The signal's byte is then dropped ("Exception ignored when trying to write to
the signal wakeup fd") and the signal with it: the process ignores SIGTERM until it is killed.

A Python-level handler always runs, in the main thread, between two bytecodes. From there,
``call_soon_threadsafe`` queues the callback, and the loop runs it at its next iteration whether or not its
wake-up byte fit into the pipe. A full pipe means that the loop is busy, so that iteration comes soon.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def handle_signals(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[int], object],
    signums: Iterable[int] = STOP_SIGNALS,
) -> Callable[[], None]:
    """Have ``loop`` call ``callback(signum)`` for each of ``signums`` received; returns what restores the
    previous handlers. Call it from the main thread (Python runs signal handlers only there)."""
    previous: dict[int, object] = {}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # A signal after the loop closed (between asyncio.run's end and restore()) has nothing left to stop.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, signum)

    for signum in signums:
        previous[signum] = signal.signal(signum, on_signal)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    return restore
