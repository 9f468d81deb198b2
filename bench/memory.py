"""Agent memory: RSS idle, peak under the throughput load, and growth over a soak at a paced rate."""

from __future__ import annotations

import time
from typing import Any

from bench.agentproc import AgentProcess
from bench.pipeline import THROUGHPUT_TOPIC
from bench.procs import Helper, RssSampler, memory_kib

MIB = 1024


def idle(agent: AgentProcess, settle: float = 3.0) -> dict[str, Any]:
    """VmRSS once the started agent has had ``settle`` seconds with nothing to do."""
    time.sleep(settle)
    mem = memory_kib(agent.pid)
    return {"rss_mib": mem["VmRSS"] / MIB, "hwm_mib": mem["VmHWM"] / MIB, "settle_s": settle}


def under_load(agent: AgentProcess, sampler: RssSampler) -> dict[str, Any]:
    """Peak RSS (the kernel's VmHWM) and the highest 0.2 s sample taken during the load phases."""
    mem = memory_kib(agent.pid)
    return {
        "hwm_mib": mem["VmHWM"] / MIB,
        "sampled_max_mib": sampler.max_kib / MIB,
        "rss_after_mib": mem["VmRSS"] / MIB,
        "samples": len(sampler.samples),
    }


def soak(agent: AgentProcess, port: int, rate: float, seconds: float, qos: int = 1) -> dict[str, Any]:
    """RSS every 5 s while ``rate`` events/s flow for ``seconds``; growth from the first minute to the end.

    The first minute is the baseline: allocator arenas, caches and the windows' steady state fill up there.
    """
    subscription = f"q{qos}"
    base = agent.processed(subscription)
    with (
        RssSampler(agent.pid, interval=5.0) as sampler,
        Helper(
            "pace",
            "--port",
            str(port),
            "--topic",
            THROUGHPUT_TOPIC.format(qos=qos),
            "--qos",
            str(qos),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ) as pub,
    ):
        pub.read(timeout=15)
        sent = pub.read(timeout=seconds + 60)
    behind = base + int(sent["sent"]) - agent.processed(subscription)
    agent.wait_processed(subscription, base + int(sent["sent"]), timeout=60)
    samples = sampler.samples
    t0 = samples[0][0]
    first_minute = [kib for t, kib in samples if 50 <= t - t0 <= 60] or [samples[0][1]]
    last = [kib for t, kib in samples if t - t0 >= seconds - 10] or [samples[-1][1]]
    baseline, end = max(first_minute), max(last)
    return {
        "rate": rate,
        "seconds": seconds,
        "sent": sent["sent"],
        "processed": agent.processed(subscription) - base,
        "behind_at_publish_end": behind,
        "rss_1min_mib": baseline / MIB,
        "rss_end_mib": end / MIB,
        "rss_max_mib": sampler.max_kib / MIB,
        "growth_pct": (end - baseline) / baseline * 100,
        "series_mib": [(round(t - t0, 1), round(kib / MIB, 2)) for t, kib in samples],
    }
