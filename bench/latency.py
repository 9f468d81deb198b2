"""Latency from publish to handler result, at a paced rate.

The ``echo`` handler (containers/handlers/echo) returns passthrough's values and asks the agent to publish the
event's payload on ``bench/out/...`` of the device broker; the agent does so as soon as the handler's reply is
decoded, before the window commit. A subscriber on ``bench/out/#`` subtracts the send time carried in the
payload. The figure therefore covers publisher -> broker -> agent intake -> handler container -> agent ->
broker -> subscriber: two broker hops more than "handler result" alone, all on the same clock. The probe
without the agent (``ceilings.bare_latency``) measures those hops and the probe's own processes alone.
``qos`` is the publisher's: the subscription asks for QoS 1, so a QoS 0 publish arrives at QoS 0 and needs no
acknowledgement after the commit.
"""

from __future__ import annotations

from typing import Any

from bench.agentproc import AgentProcess
from bench.pipeline import LATENCY_OUT, LATENCY_TOPIC
from bench.procs import Helper, RssSampler, percentile


def latency(
    agent: AgentProcess,
    port: int,
    rate: float,
    seconds: float,
    *,
    qos: int = 1,
    warmup: float = 1.0,
    rss: RssSampler | None = None,
) -> dict[str, Any]:
    """p50/p99/max of publish -> echoed result at ``rate`` events/s for ``seconds`` (first ``warmup`` s ignored)."""
    total = int(rate * seconds)
    skip = int(rate * warmup)
    base = agent.processed("lat")
    cpu0 = agent.cpu()
    with Helper(
        "latsub",
        "--port",
        str(port),
        "--topic",
        LATENCY_OUT,
        "--count",
        str(total),
        "--warmup",
        str(skip),
        "--idle",
        "3",
    ) as sub:
        sub.read(timeout=15)
        with Helper(
            "pace",
            "--port",
            str(port),
            "--topic",
            LATENCY_TOPIC,
            "--qos",
            str(qos),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ) as pub:
            pub.read(timeout=15)
            sent = pub.read(timeout=seconds * 3 + 30)
        got = sub.read(timeout=seconds * 2 + 30)
    cpu1 = agent.cpu()
    lat: list[float] = got["latencies_ms"]
    processed = agent.processed("lat") - base
    out: dict[str, Any] = {
        "rate": rate,
        "qos": qos,
        "seconds": seconds,
        "sent": sent["sent"],
        "achieved_rate": sent["sent"] / (sent["end"] - sent["start"]),
        "received": got["received"],
        "processed": processed,
        "measured": len(lat),
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat, default=float("nan")),
        "agent_cpu_share": (cpu1 - cpu0) / (sent["end"] - sent["start"]),
    }
    if rss is not None:
        out["rss_max_kib"] = rss.max_kib
    if got["received"] < sent["sent"]:
        out["error"] = f"{sent['sent'] - got['received']} of {sent['sent']} echoes missing"
    return out
