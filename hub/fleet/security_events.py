"""Security events the devices report -- desired-state messages they refused, by reason -- summed over the fleet
for Prometheus (``edgefleet_hub_device_desired_refusals``), per reason and never per device, so the series stay
few however large the fleet.

Fed by :meth:`hub.fleet.registry.Fleet.write_reported` with every reported state ingest writes; a device's
counts follow its newest reported state, in the registry's order (the agent's run and report number, else its
clock: ``hub.fleet.registry._newer``). Every hub replica
receives every device's reported state (retained, replayed on subscribe), so each one's sum is the fleet's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from edge_protocol.messages import Reported
from hub import metrics


class RefusalTally:
    """Each device's latest reported refusal counts, and their sum by reason in the gauge."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # written from the ingest writer's thread, read by tests
        self._devices: dict[str, tuple[_Order, dict[str, int]]] = {}
        self.totals: dict[str, int] = {}

    def observe(self, reports: Iterable[Reported]) -> None:
        with self._lock:
            for rep in reports:
                self._observe(rep)

    def _observe(self, rep: Reported) -> None:
        order = _order(rep)
        stored = self._devices.get(rep.device)
        if stored is not None and not _newer(order, stored[0]):
            return  # a retained state replayed after a newer one
        old = stored[1] if stored is not None else {}
        self._devices[rep.device] = (order, dict(rep.desired_refusals))
        for reason in set(old) | set(rep.desired_refusals):
            delta = rep.desired_refusals.get(reason, 0) - old.get(reason, 0)
            if delta:
                self.totals[reason] = self.totals.get(reason, 0) + delta
                metrics.DEVICE_DESIRED_REFUSALS.labels(reason).set(self.totals[reason])


_Order = tuple[int | None, int | None, float]
"""(run, seq, ts) of a reported state; run and seq both None unless both are set, as the registry stores them."""


def _order(rep: Reported) -> _Order:
    if rep.run is not None and rep.seq is not None:
        return rep.run, rep.seq, rep.ts
    return None, None, rep.ts


def _newer(new: _Order, old: _Order) -> bool:
    """``new`` is not older than ``old``: the registry's rule (``hub.fleet.registry._newer``) in Python."""
    run, seq, ts = new
    old_run, old_seq, old_ts = old
    if run is not None and seq is not None:
        return old_run is None or old_seq is None or run > old_run or (run == old_run and seq >= old_seq)
    return ts >= old_ts


TALLY = RefusalTally()
"""The process's tally, like the metrics it feeds."""
