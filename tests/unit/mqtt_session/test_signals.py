"""A stop signal reaches the event loop even when the loop's self-pipe is full, as it is when many aiomqtt
clients share the loop (each asks for a socket to be watched through ``call_soon_threadsafe``, one byte each)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

from mqtt_session.signals import handle_signals


def _fill(sock: socket.socket) -> int:
    """Write zero bytes (no signal number) into ``sock`` until it takes no more; how many it took."""
    sock.setblocking(False)
    written = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.send(b"\0")
            written += 1
    return written


def test_a_signal_reaches_the_loop_while_its_self_pipe_is_full() -> None:
    received: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def on_signal(signum: int) -> None:
            received.append(signum)
            done.set()

        restore = handle_signals(loop, on_signal, (signal.SIGUSR1,))
        try:
            # The loop's end of its self-pipe, filled as aiomqtt's writes fill it under load.
            assert _fill(loop._csock) > 0  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGUSR1)
            async with asyncio.timeout(5):
                await done.wait()
        finally:
            restore()

    asyncio.run(main())
    assert received == [signal.SIGUSR1]


def test_restore_puts_back_the_previous_handler() -> None:
    def before(_signum: int, _frame: object) -> None: ...

    previous = signal.signal(signal.SIGUSR2, before)
    try:
        loop = asyncio.new_event_loop()
        try:
            restore = handle_signals(loop, lambda _signum: None, (signal.SIGUSR2,))
            assert signal.getsignal(signal.SIGUSR2) is not before
            restore()
            assert signal.getsignal(signal.SIGUSR2) is before
        finally:
            loop.close()
    finally:
        signal.signal(signal.SIGUSR2, previous)
