"""From the local broker to the dispatchers: routing, and one acknowledgement per event once all targets
have committed it."""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.broker import Incoming, LocalBroker
from edge_agent.dispatcher import Dispatcher
from edge_agent.router import Router


class Intake:
    """Routes each event to every matching subscription's dispatcher and acknowledges it after the last."""

    def __init__(self, local: LocalBroker) -> None:
        self._local = local
        self._router: Router[Dispatcher] = Router([])
        self._in_flight: set[int] = set()
        self.unrouted = 0
        self.duplicates = 0

    def set_routes(self, routes: Sequence[tuple[str, Dispatcher]]) -> None:
        """Route by these (topic filter, dispatcher) pairs from the next event on."""
        self._router = Router(routes)

    def ack(self, msg: Incoming) -> None:
        """One target is done with ``msg``; the broker hears of it when all are."""
        msg.refs -= 1
        if msg.refs <= 0:
            self._in_flight.discard(msg.mid)
            self._local.ack(msg.mid, msg.qos)

    async def run(self) -> None:
        async for batch in self._local.batches():
            for msg in batch:
                if msg.mid:
                    if msg.dup and msg.mid in self._in_flight:
                        # The connection dropped while we held this event: the copy we have will be acked.
                        self.duplicates += 1
                        continue
                    self._in_flight.add(msg.mid)
                targets = self._router.match(msg.topic)
                if not targets:
                    self.unrouted += 1
                    msg.refs = 1
                    self.ack(msg)
                    continue
                msg.refs = len(targets)
                for dispatcher in targets:
                    await dispatcher.put(msg)
