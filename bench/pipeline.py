"""Agent throughput: a burst from the C publisher through the agent, passthrough and 1 s windows into the outbox."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

from bench.agentproc import AgentProcess
from bench.procs import RssSampler, cpu_seconds, memory_kib, publish_burst
from tests.support.agent_config import SHORT_GRACE, agent_document

# One agent serves every phase on its device broker: one subscription per phase, so each phase counts from
# its own zero in the outbox and the idle ones cost nothing.
THROUGHPUT_TOPIC = "bench/q{qos}/t"
LATENCY_TOPIC = "bench/in/lat"
LATENCY_OUT = "bench/out/#"


def bench_document(
    device_id: str,
    data_dir: Path,
    local_port: int,
    *,
    cloud_port: int | None = None,
    subscriptions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The benchmark's agent config document: passthrough and echo handlers, one subscription per phase."""
    if subscriptions is None:
        subscriptions = [
            {"name": "q0", "topic": "bench/q0/#", "handler": "pt", "qos": 0, "window": {"size": "1s"}},
            {"name": "q1", "topic": "bench/q1/#", "handler": "pt", "qos": 1, "window": {"size": "1s"}},
            {"name": "lat", "topic": "bench/in/#", "handler": "echo", "qos": 1, "window": {"size": "1s"}},
        ]
    return agent_document(
        device_id=device_id,
        data_dir=data_dir,
        device_port=local_port,
        cloud_port=cloud_port,
        handlers=[
            {"name": "pt", "image": "edgefleet/passthrough:dev"},
            {"name": "echo", "image": "edgefleet/echo:dev"},
        ],
        subscriptions=subscriptions,
        local_broker={} if AGENT_PROTOCOL[0] is None else {"protocol": AGENT_PROTOCOL[0]},
        grace_period=SHORT_GRACE,
    )


AGENT_PROTOCOL: list[str | None] = [None]
"""The agent's MQTT version toward the device broker, set once by ``--agent-protocol``; None: the agent's default."""


def _handler_cpu(pids: dict[str, int]) -> float:
    total = 0.0
    for pid in pids.values():
        with contextlib.suppress(OSError):  # the container exited
            total += cpu_seconds(pid)
    return total


def throughput(
    agent: AgentProcess,
    host: str,
    port: int,
    qos: int,
    count: int,
    rss: RssSampler | None = None,
    *,
    preload: bool | None = None,
) -> dict[str, Any]:
    """Events/s from the publisher's start until the agent has committed the last event's effect.

    ``preload`` (the default at QoS 1): the agent is stopped (SIGSTOP) while the burst is published, so that it
    waits in the broker (the agent's persistent session and socket), and timed from SIGCONT: the agent drains a
    backlog, as the bare subscriber's preloaded ceiling does, and the publisher's rate is not in the figure.
    """
    if preload is None:
        preload = qos == 1
    subscription = f"q{qos}"
    base = agent.processed(subscription)
    handlers = {k: v for k, v in agent.handler_pids().items() if k == "pt"}
    sampler = rss or RssSampler(agent.pid)
    topic = THROUGHPUT_TOPIC.format(qos=qos)
    with sampler if rss is None else contextlib.nullcontext():
        if preload:
            # Within the agent's keepalive (30 s, 45 s before the broker gives up on it): parallel publishers.
            agent.proc_signal(signal.SIGSTOP)
            try:
                pub_start, pub_end, nbytes = publish_burst(host, port, topic, count, qos, parallel=True)
                cpu0, hcpu0 = agent.cpu(), _handler_cpu(handlers)
                start = time.time()
            finally:
                agent.proc_signal(signal.SIGCONT)
        else:
            cpu0, hcpu0 = agent.cpu(), _handler_cpu(handlers)
            start, pub_end, nbytes = publish_burst(host, port, topic, count, qos)
            pub_start = start
        done = agent.wait_processed(subscription, base + count, timeout=60 + count / 1000)
    cpu1, hcpu1 = agent.cpu(), _handler_cpu(handlers)
    processed = agent.processed(subscription) - base
    out: dict[str, Any] = {
        "events": count,
        "processed": processed,
        "mode": "preload" if preload else "live",
        "publisher_rate": count / (pub_end - pub_start),
        "cpu_per_event_us": (cpu1 - cpu0) / max(processed, 1) * 1e6,
        "handler_cpu_per_event_us": (hcpu1 - hcpu0) / max(processed, 1) * 1e6,
        "rss_max_kib": sampler.max_kib,
        "hwm_kib": memory_kib(agent.pid)["VmHWM"],
        "payload_bytes": nbytes,
    }
    if done is None:
        out["error"] = f"only {processed} of {count} events processed before the timeout"
        out["rate"] = processed / (time.time() - start)
    else:
        out["seconds"] = round(done - start, 3)
        out["rate"] = count / (done - start)
    return out
