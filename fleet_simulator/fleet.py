"""The fleet simulator behind ``hub simulate``: N virtual devices in one process, for load tests and for trying
the hub without hardware.

Each device (:mod:`fleet_simulator.device`) keeps its own MQTT v5 session on the cloud broker, with its id as
client id and a retained offline ``Status`` as its will; publishes a retained online ``Status`` and a
``Reported`` state every ``report_every``; closes windows at the configured rate and sends them from an outbox
as the agent's uplink does (batches, resends of what the hub has not acked); and applies the desired state the
hub publishes, as a real agent would report it (:mod:`fleet_simulator.state`). Progress is printed every few
seconds: records sent and acknowledged, the wait for the hub's acks, desired versions applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet_simulator.device import Connection, DeviceStats, FleetStats, SimConfig, VirtualDevice
from fleet_simulator.messages import device_ids
from fleet_simulator.state import DeviceState

__all__ = ["Connection", "DeviceStats", "Fleet", "SimConfig", "percentile", "raise_open_files"]

CONNECTS_PER_TICK = 25
"""Devices started every 50 ms: 500 connections a second, so that the broker and hub see a ramp, not a wall."""
SHUTDOWN_GRACE = 10.0
"""Seconds the devices get to publish their offline status and disconnect when the fleet stops."""


def raise_open_files(wanted: int) -> tuple[int, int]:
    """Raise this process's open-files soft limit toward ``wanted`` (at most the hard limit); (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


def percentile(values: Any, q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[rank])


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


class Fleet:
    """``await Fleet(config).run(stop, emit=print)``: every device until ``stop`` is set or ``duration`` passed."""

    def __init__(self, config: SimConfig, *, key: Ed25519PublicKey | None = None, record: Path | None = None) -> None:
        self.config = config
        self.stats = FleetStats()
        self._record = record
        self.devices = [
            VirtualDevice(dev, i, config, self.stats, DeviceState(dev, config.behaviour, key))
            for i, dev in enumerate(device_ids(config.device_prefix, config.devices))
        ]
        self._by_id = {device.id: device for device in self.devices}
        self._last: dict[str, float] = {}

    def device_stats(self) -> list[DeviceStats]:
        """Each device's connections (attempts, reconnect times, losses) and outbox counters now, by id."""
        return [device.snapshot() for device in self.devices]

    def records(self, device: str, through: int | None = None) -> dict[str, int]:
        """Window id -> events of each record ``device`` made, up to sequence ``through``: what the hub must
        store, each window once."""
        return self._by_id[device].records(through)

    async def run(
        self,
        stop: asyncio.Event,
        emit: Callable[[dict[str, Any]], None],
        *,
        duration: float | None = None,
        every: float = 5.0,
        on_ready: Callable[[list[str]], Any] | None = None,
    ) -> dict[str, Any]:
        """Run the fleet; ``emit`` gets a progress line every ``every`` s, and ``on_ready`` (maybe async) the
        device ids once all are connected. Returns the final figures (also emitted)."""
        started, cpu0 = time.monotonic(), time.process_time()
        with contextlib.ExitStack() as files:
            if self._record is not None:
                self.stats.record_file = files.enter_context(self._record.open("w", buffering=1 << 20))
            tasks = []
            for i, device in enumerate(self.devices):
                tasks.append(asyncio.create_task(device.run(stop), name=f"sim.{device.id}"))
                if i % CONNECTS_PER_TICK == CONNECTS_PER_TICK - 1:
                    await asyncio.sleep(0.05)
            ready = False
            self._snapshot(started)  # the baseline of the first interval
            try:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(every if ready else 0.1):
                            await stop.wait()
                    if duration is not None and time.monotonic() - started >= duration:
                        stop.set()
                    if not ready and self.stats.connected == len(self.devices):
                        ready = True
                        emit(
                            {
                                "event": "ready",
                                "devices": len(self.devices),
                                "seconds": round(time.monotonic() - started, 2),
                            }
                        )
                        if on_ready is not None:
                            result = on_ready([d.id for d in self.devices])
                            if asyncio.iscoroutine(result):
                                await result
                    elif ready:
                        emit(self._snapshot(started))
            finally:
                stop.set()
                _, late = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
                for task in late:  # its connection closes with the process: the broker sends its will
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        final = self._snapshot(started)
        waits = self.stats.ack_waits
        final.update(
            event="final",
            ack_wait_p50_ms=_ms(percentile(waits, 50)),
            ack_wait_p99_ms=_ms(percentile(waits, 99)),
            cpu_seconds=round(time.process_time() - cpu0, 2),
        )
        emit(final)
        return final

    def _snapshot(self, started: float) -> dict[str, Any]:
        """The fleet's counters now, with rates and the acks' wait over the interval since the last snapshot."""
        now = time.monotonic()
        s = self.stats
        boxes = [d.outbox for d in self.devices]
        totals = {
            "sent": s.first_sends,
            "acked": sum(b.acked for b in boxes),
            "resent": sum(b.resent for b in boxes),
        }
        span = max(1e-9, now - self._last.get("at", started))
        waits = s.ack_waits[int(self._last.get("waits", 0)) :]
        applied = [d.state.applied_version for d in self.devices if d.state.applied_version is not None]
        line: dict[str, Any] = {
            "event": "progress",
            "seconds": round(now - started, 1),
            "connected": s.connected,
            "reconnects": max(0, s.connects - len(self.devices)),
            "windows": s.windows,
            "generated": sum(b.generated for b in boxes),
            **totals,
            "pending": sum(b.pending for b in boxes),
            "sent_per_s": round((totals["sent"] - self._last.get("sent", 0)) / span),
            "acked_per_s": round((totals["acked"] - self._last.get("acked", 0)) / span),
            "ack_wait_p99_ms": _ms(percentile(waits, 99)),
            "applied": len(applied),
            "versions": [min(applied), max(applied)] if applied else None,
            "refusals": sum(d.state.refusals for d in self.devices),
        }
        self._last = {"at": now, "waits": len(s.ack_waits), **totals}
        return line


def human(line: dict[str, Any]) -> str:
    """One progress line for a terminal."""
    if line["event"] == "ready":
        return f"{line['devices']} devices connected in {line['seconds']:.1f}s"
    text = (
        f"{line['seconds']:7.1f}s  connected {line['connected']}  records sent {line['sent']:,} "
        f"({line['sent_per_s']:,}/s)  acked {line['acked']:,} ({line['acked_per_s']:,}/s)  "
        f"pending {line['pending']:,}  resent {line['resent']:,}  ack wait p99 {line['ack_wait_p99_ms']} ms"
    )
    if line["applied"]:
        low, high = line["versions"]
        text += f"  desired applied {line['applied']} (v{low}..v{high}), refusals {line['refusals']}"
    if line["event"] == "final":
        waits = f"{line['ack_wait_p50_ms']}/{line['ack_wait_p99_ms']} ms"
        text += f"\nfinal: ack wait p50/p99 {waits}, CPU {line['cpu_seconds']}s"
    return text
