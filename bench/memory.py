"""Agent memory: RSS idle, peak under the throughput load, and growth over a soak at a paced rate."""

from __future__ import annotations

import time
from typing import Any

from bench.agentproc import AgentProcess
from bench.pipeline import LATENCY_OUT, LATENCY_TOPIC
from bench.procs import Helper, MachineSampler, RssSampler, broker_counter, memory_kib

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


def soak(agent: AgentProcess, host: str, port: int, rate: float, seconds: float, qos: int = 1) -> dict[str, Any]:
    """``rate`` events/s for ``seconds`` through the echo handler (the latency path): p50/p99/max per minute of
    the publisher's schedule (by seq, ``rate * 60`` events each), RSS every 5 s (growth from the first minute to
    the end), and what the broker dropped. Each minute also carries the machine's speed (``calibration_us``, the
    CPU time of a fixed loop, sampled every 5 s) and the agent's CPU in cores.

    The first minute is the RSS baseline: allocator arenas, caches and the windows' steady state fill up there.
    Drops: the broker's ``$SYS/broker/publish/messages/dropped`` (a bounded queue full: events lost before the
    agent) before and after, and the publishes still unacknowledged a second after the publisher stopped (a
    publisher that loses its connection fails the phase); beside them the events not processed when the agent
    was given up on.
    """
    subscription = "lat"
    base = agent.processed(subscription)
    dropped0 = broker_counter(host, port)
    total = int(rate * seconds)
    with (
        RssSampler(agent.pid, interval=5.0) as sampler,
        MachineSampler(agent.pid) as machine,
        Helper(
            "latsub", "--port", str(port), "--topic", LATENCY_OUT, "--count", str(total), "--idle", "10",
            "--per-events", str(int(rate * 60)),
        ) as sub,  # fmt: skip
    ):
        sub.read(timeout=15)
        with Helper("pace", "--port", str(port), "--topic", LATENCY_TOPIC, "--qos", str(qos), "--rate", str(rate),
                    "--seconds", str(seconds)) as pub:  # fmt: skip
            pub.read(timeout=15)
            sent = pub.read(timeout=seconds * 1.5 + 60)
        behind = base + int(sent["sent"]) - agent.processed(subscription)
        agent.wait_processed(subscription, base + int(sent["sent"]), timeout=60 + max(0, behind) / 1000)
        got = sub.read(timeout=120)
    dropped1 = broker_counter(host, port)
    samples = sampler.samples
    t0 = samples[0][0]
    first_minute = [kib for t, kib in samples if 50 <= t - t0 <= 60] or [samples[0][1]]
    last = [kib for t, kib in samples if t - t0 >= seconds - 10] or [samples[-1][1]]
    baseline, end = max(first_minute), max(last)
    minutes = got["per"]
    # Beside each minute, how fast the machine's CPU was and what the agent used: a minute over the target while
    # the same fixed work cost everyone more CPU is the host's, not the agent's.
    contexts = machine.per_interval(sent["start"], 60.0, max((m["index"] for m in minutes), default=-1) + 1)
    for minute in minutes:
        minute.update(contexts[minute["index"]])
    processed = agent.processed(subscription) - base
    return {
        "rate": rate,
        "qos": qos,
        "seconds": seconds,
        "sent": sent["sent"],
        "achieved_rate": sent["sent"] / (sent["end"] - sent["start"]),
        "processed": processed,
        "received": got["received"],
        "behind_at_publish_end": behind,
        "per_minute": minutes,
        "worst_p99_ms": max((m["p99_ms"] for m in minutes), default=float("nan")),
        "minutes_over_10ms": sum(1 for m in minutes if m["p99_ms"] > 10),
        "broker_dropped": None if dropped0 is None or dropped1 is None else dropped1 - dropped0,
        "publisher_unacked": sent.get("unacked", 0),
        "unprocessed": int(sent["sent"]) - processed,
        "rss_1min_mib": baseline / MIB,
        "rss_end_mib": end / MIB,
        "rss_max_mib": sampler.max_kib / MIB,
        "growth_pct": (end - baseline) / baseline * 100,
        "series_mib": [(round(t - t0, 1), round(kib / MIB, 2)) for t, kib in samples],
    }
