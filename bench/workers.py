"""``python -m bench --workers N``: events/s and CPU per event of one QoS 1 subscription on N intake workers
against the same subscription on one (the agent alone), each draining a preloaded burst (published while the
agent and its workers are stopped) in its own agent, on a broker with the shipped device.conf limits (the
agent's default intake protocol unless ``--agent-protocol``).

CPU per event counts the agent and its worker processes (and separately the handler containers): with N
workers the work is spread over processes, so the machine's cores, not one interpreter, set the ceiling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import pipeline
from bench.agentproc import AgentProcess
from bench.procs import cpu_seconds, device_broker_limits, publish_burst
from scripts.mosquitto import Mosquitto

TOPIC = "bench/w/t"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    return found


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def _handler_pids(client: Any, device_id: str) -> list[int]:
    """Every handler container's main process: the agent's and each worker's replica."""
    found = client.containers.list(filters={"label": f"edgefleet.device={device_id}"})
    return [int(c.attrs["State"]["Pid"]) for c in found]


def devices(device_id: str, workers: int) -> list[str]:
    """The device ids of ``run``'s two agents (one worker, then ``workers``): their containers carry them."""
    return [_device(device_id, 1), _device(device_id, workers)]


def _device(device_id: str, workers: int) -> str:
    return f"{device_id}-w{workers}"


def one(client: Any, device_id: str, workers: int, events: int, repeats: int) -> dict[str, Any]:
    """Best of ``repeats`` bursts of ``events`` into an agent whose one subscription runs on ``workers``."""
    sub = {"name": "w", "topic": "bench/w/#", "handler": "pt", "qos": 1, "window": {"size": "1s"}, "workers": workers}
    runs: list[dict[str, Any]] = []
    # The shipped device broker's limits (device.conf), as the other agent phases: in-flight, queue, expiry.
    limits = device_broker_limits(min_queued=events)
    with Mosquitto(extra_config=limits) as broker, tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        doc = pipeline.bench_document(_device(device_id, workers), Path(tmp), broker.port, subscriptions=[sub])
        agent = AgentProcess(doc, docker_client=client)
        try:
            agent.start()
            time.sleep(2.0)
            for _ in range(repeats):
                procs = [agent.pid, *_children(agent.pid)]
                handlers = _handler_pids(client, agent.device_id)
                base = agent.processed("w")
                # A preloaded backlog, as the agent's QoS 1 figure: the agent and its workers are held with SIGSTOP
                # while the burst is published (into their sockets and sessions), and timed from SIGCONT, so that
                # the publisher (which shares the machine) does not set the rate.
                for pid in procs:
                    os.kill(pid, signal.SIGSTOP)
                try:
                    pub_start, pub_end, _ = publish_burst(broker.host, broker.port, TOPIC, events, 1)
                finally:
                    for pid in procs:
                        os.kill(pid, signal.SIGCONT)
                start = time.time()
                cpu0, h0 = _cpu(procs), _cpu(handlers)
                done = agent.wait_processed("w", base + events, timeout=60 + events / 500)
                cpu1, h1 = _cpu(procs), _cpu(handlers)
                n = agent.processed("w") - base
                runs.append({
                    "rate": n / ((done or time.time()) - start),
                    "publisher_rate": events / (pub_end - pub_start),
                    "processed": n,
                    "cpu_per_event_us": (cpu1 - cpu0) / max(n, 1) * 1e6,
                    "handler_cpu_per_event_us": (h1 - h0) / max(n, 1) * 1e6,
                    "processes": len(procs),
                    "complete": done is not None,
                })
        finally:
            agent.stop()
    best = max(runs, key=lambda r: r["rate"])
    return {"workers": workers, "best": best, "runs": runs}


def run(client: Any, device_id: str, workers: int, events: int = 60_000, repeats: int = 3) -> dict[str, Any]:
    """The subscription on 1 worker, then on ``workers``; the speed-up of the best runs."""
    single = one(client, device_id, 1, events, repeats)
    multi = one(client, device_id, workers, events, repeats)
    return {
        "one": single,
        "many": multi,
        "speedup": multi["best"]["rate"] / single["best"]["rate"],
        "cpu_per_event_ratio": multi["best"]["cpu_per_event_us"] / single["best"]["cpu_per_event_us"],
    }
