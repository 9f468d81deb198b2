"""The phases of a benchmark run: each measurement recorded (or its failure), with the machine's load beside it."""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import ceilings, latency, memory, pipeline, profile
from bench.agentproc import AgentProcess, DeadLetters
from bench.procs import REPO, RssSampler, device_broker_limits, loadavg, machine_busy_seconds
from scripts.mosquitto import Mosquitto

RESULTS = REPO / "bench" / "results"
LATENCY_RUNS = ((1000, 1), (5000, 1), (5000, 0))  # (events/s, QoS): QoS 1 is the subscriptions' default
console = Console(stderr=True)


@dataclass(frozen=True)
class Plan:
    paho_events: int
    aiomqtt_events: int
    echo_lines: int
    agent_events: int
    latency_seconds: float
    upstream_seconds: int
    with_paho_v5: bool
    repeats: int
    worker_events: int
    """Events of each intake-workers run (2 workers against 1, ``bench.workers``)."""


FULL = Plan(
    paho_events=150_000,
    aiomqtt_events=100_000,
    echo_lines=200_000,
    agent_events=150_000,
    latency_seconds=15,
    upstream_seconds=20,
    with_paho_v5=True,
    repeats=2,
    worker_events=60_000,
)
QUICK = Plan(
    paho_events=30_000,
    aiomqtt_events=15_000,
    echo_lines=50_000,
    agent_events=30_000,
    latency_seconds=4,
    upstream_seconds=10,
    with_paho_v5=True,
    repeats=1,
    worker_events=10_000,
)


def phase(results: dict[str, Any], key: str, what: str, func: Callable[[], Any]) -> Any:
    """Run one measurement; a failure is recorded under ``key`` and the benchmark goes on."""
    console.log(f"{what} ...")
    started, busy0 = time.monotonic(), machine_busy_seconds()
    try:
        value = func()
    except Exception as exc:
        console.log(f"[red]{what} failed: {exc}[/]")
        value = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
    elapsed = time.monotonic() - started
    if isinstance(value, dict) and elapsed >= 1.0:
        # Everything on the machine, ours included: other work on a shared host shows up here.
        value["machine_busy_cores"] = round((machine_busy_seconds() - busy0) / elapsed, 2)
        value["loadavg_1m"] = loadavg()[0]
    node = results
    *parents, last = key.split(".")
    for parent in parents:
        node = node.setdefault(parent, {})
    node[last] = value
    console.log(f"{what}: done in {elapsed:.1f}s")
    return value


def best_of(results: dict[str, Any], key: str, runs: list[dict[str, Any]]) -> None:
    """Keep the fastest of repeated runs under ``key`` (interference only ever slows a run down)."""
    good = [r for r in runs if isinstance(r, dict) and "rate" in r and "error" not in r]
    best = dict(max(good, key=lambda r: r["rate"]) if good else runs[-1])
    best["runs"] = [round(r.get("rate", 0)) for r in runs]
    node = results
    *parents, last = key.split(".")
    for parent in parents:
        node = node.setdefault(parent, {})
    node[last] = best


def run_ceilings(results: dict[str, Any], plan: Plan, client: Any, device_id: str) -> None:
    """The ceilings not paired with an agent run (bare paho MQTT 3.1.1 runs next to the agent's, see below)."""
    if plan.with_paho_v5:
        for qos in (0, 1):
            phase(
                results,
                f"ceilings.paho_v5_q{qos}",
                f"ceiling: bare paho MQTT 5 QoS {qos}",
                lambda q=qos: ceilings.bare_subscriber("paho", q, plan.paho_events, mqtt_version=5),
            )
    for qos in (0, 1):
        phase(
            results,
            f"ceilings.aiomqtt_q{qos}",
            f"ceiling: bare aiomqtt QoS {qos}",
            lambda q=qos: ceilings.bare_subscriber("aiomqtt", q, plan.aiomqtt_events),
        )
    for rate in (1000, 5000):
        phase(
            results,
            f"ceilings.latency_{rate}",
            f"ceiling: latency probe without the agent at {rate}/s",
            lambda r=rate: ceilings.bare_latency(r, plan.latency_seconds),
        )
    if client is not None:
        phase(
            results,
            "ceilings.container_echo",
            "ceiling: container echo through the engine (attach stream)",
            lambda: ceilings.container_echo(client, device_id, plan.echo_lines),
        )
        phase(
            results,
            "ceilings.container_echo_socket",
            "ceiling: container echo over a unix socket (the agent's default io)",
            lambda: ceilings.container_echo(client, device_id, plan.echo_lines, via="socket"),
        )


def run_agent(
    results: dict[str, Any], plan: Plan, client: Any, device_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    info: dict[str, Any] = {}
    # The shipped device broker's limits (bounded queue, in-flight, session expiry): the default configuration is
    # what is measured. $SYS counters every second, for the soak's drop count.
    limits = device_broker_limits(min_queued=plan.agent_events, sys_interval=1)
    info["broker_limits"] = limits
    with Mosquitto(extra_config=limits) as broker, tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        agent = AgentProcess(pipeline.bench_document(device_id, Path(tmp), broker.port), docker_client=client)
        dead: DeadLetters | None = None
        try:
            info["start_s"] = agent.start()
            info["pid"] = agent.pid
            dead = DeadLetters(broker.host, broker.port)
            phase(results, "memory.idle", "agent RSS idle", lambda: memory.idle(agent))
            with RssSampler(agent.pid) as sampler:
                # Paired and interleaved with the bare paho ceiling, best of `plan.repeats`: a shared machine's
                # other load then hits both sides alike, and only ever slows a run down.
                for qos in (0, 1):
                    bare_runs, agent_runs = [], []
                    for rep in range(plan.repeats):
                        bare_runs.append(
                            phase(
                                results,
                                f"runs.paho_q{qos}_{rep}",
                                f"ceiling: bare paho QoS {qos} (run {rep + 1})",
                                lambda q=qos: ceilings.bare_subscriber("paho", q, plan.paho_events),
                            )
                        )
                        agent_runs.append(
                            phase(
                                results,
                                f"runs.agent_q{qos}_{rep}",
                                f"agent throughput QoS {qos} (run {rep + 1})",
                                lambda q=qos: pipeline.throughput(
                                    agent, broker.host, broker.port, q, plan.agent_events, rss=sampler
                                ),
                            )
                        )
                    best_of(results, f"ceilings.paho_q{qos}", bare_runs)
                    best_of(results, f"pipeline.q{qos}", agent_runs)
                for rate, qos in LATENCY_RUNS:
                    phase(
                        results,
                        f"latency.{rate}_q{qos}",
                        f"latency at {rate}/s, QoS {qos}",
                        lambda r=rate, q=qos: latency.latency(agent, broker.port, r, plan.latency_seconds, qos=q),
                    )
            phase(results, "memory.load", "agent RSS under load", lambda: memory.under_load(agent, sampler))
            if args.soak:
                minutes = args.soak_minutes
                phase(
                    results,
                    "memory.soak",
                    f"soak ({minutes:g} min at 5,000/s QoS 1)",
                    lambda: memory.soak(agent, broker.host, broker.port, 5000, minutes * 60),
                )
            if args.profile:
                for qos in (0, 1):
                    phase(
                        results,
                        f"profile.q{qos}",
                        f"py-spy profile, QoS {qos} burst",
                        lambda q=qos: profile.profiled(
                            agent,
                            f"q{q}",
                            RESULTS,
                            lambda: pipeline.throughput(agent, broker.host, broker.port, q, plan.agent_events),
                        ),
                    )
                phase(
                    results,
                    "profile.latency_5000",
                    "py-spy profile, latency at 5,000/s",
                    lambda: profile.profiled(
                        agent,
                        "latency-5000",
                        RESULTS,
                        lambda: latency.latency(agent, broker.port, 5000, plan.latency_seconds),
                    ),
                )
        finally:
            if dead is not None:
                info["dead_letters"] = dict(dead.by_reason)
                dead.close()
            agent.stop()
            info["log_tail"] = agent.log_tail(15)
    return info
