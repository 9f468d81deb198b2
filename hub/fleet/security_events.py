"""Security events the devices report -- desired-state messages they refused, by reason -- summed over the fleet
for Prometheus (``edgefleet_hub_device_desired_refusals``), per reason and never per device, so the series stay
few however large the fleet.

Fed by :meth:`hub.fleet.registry.Fleet.write_reported` with every reported state ingest writes; a device's
counts follow its newest reported state (by the agent's ``ts``, as the registry keeps it). Every hub replica
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
        self._devices: dict[str, tuple[float, dict[str, int]]] = {}
        self.totals: dict[str, int] = {}

    def observe(self, reports: Iterable[Reported]) -> None:
        with self._lock:
            for rep in reports:
                self._observe(rep)

    def _observe(self, rep: Reported) -> None:
        ts, old = self._devices.get(rep.device, (float("-inf"), {}))
        if rep.ts < ts:
            return  # a retained state replayed after a newer one
        self._devices[rep.device] = (rep.ts, dict(rep.desired_refusals))
        for reason in set(old) | set(rep.desired_refusals):
            delta = rep.desired_refusals.get(reason, 0) - old.get(reason, 0)
            if delta:
                self.totals[reason] = self.totals.get(reason, 0) + delta
                metrics.DEVICE_DESIRED_REFUSALS.labels(reason).set(self.totals[reason])


TALLY = RefusalTally()
"""The process's tally, like the metrics it feeds."""
