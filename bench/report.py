"""The table (figure, value, ceiling, ratio, target, pass/fail) and ``bench/results/latest.json``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class Row:
    figure: str
    value: str
    ceiling: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None  # None: no target, or not measured


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: Any, fmt: str = "{:,.0f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def build_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    ceil = results.get("ceilings", {})
    for key, label in (
        ("paho", "bare paho (MQTT 3.1.1)"),
        ("paho_v5", "bare paho (MQTT 5)"),
        ("aiomqtt", "bare aiomqtt"),
    ):
        for qos in (0, 1):
            r = ceil.get(f"{key}_q{qos}")
            if r is not None:
                value = f"{_num(r.get('rate'))} msg/s" if "rate" in r else f"error: {r.get('error')}"
                mode = " (preloaded session)" if r.get("mode") == "preload" else ""
                rows.append(
                    Row(
                        f"ceiling: {label} QoS {qos}{mode}",
                        value,
                        ratio=f"{_num(r.get('cpu_per_event_us'), '{:.1f}')} µs CPU/msg; {publisher(r)}",
                    )
                )
    for key, label in (("container_echo", "engine's attach stream"), ("container_echo_socket", "unix socket")):
        echo = ceil.get(key)
        if echo is not None:
            rows.append(Row(f"ceiling: container JSON-lines echo, {label}", f"{_num(echo.get('rate'))} lines/s"))

    for qos, target in ((0, 0.6), (1, 0.4)):
        agent = _get(results, "pipeline", f"q{qos}")
        bare = ceil.get(f"paho_q{qos}") or {}
        if agent is None:
            continue
        if "rate" not in agent:
            rows.append(Row(f"agent events/s QoS {qos}", f"error: {agent.get('error')}", target=f"≥{target:.0%}"))
            continue
        ratio = agent["rate"] / bare["rate"] if bare.get("rate") else None
        drained = ", preloaded backlog" if agent.get("mode") == "preload" else ""
        rows.append(
            Row(
                f"agent events/s QoS {qos} (passthrough, 1 s windows, outbox{drained})",
                _num(agent["rate"]),
                _num(bare.get("rate")),
                f"{_num(ratio, '{:.0%}')}; {publisher(agent)}",
                f"≥{target:.0%} of bare paho",
                None if ratio is None else ratio >= target and "error" not in agent,
            )
        )
        cpu_ratio = agent["cpu_per_event_us"] / bare["cpu_per_event_us"] if bare.get("cpu_per_event_us") else None
        rows.append(
            Row(
                f"agent CPU per event QoS {qos}",
                f"{agent['cpu_per_event_us']:.1f} µs",
                f"{_num(bare.get('cpu_per_event_us'), '{:.1f}')} µs",
                # Per core of CPU: a steadier comparison than events/s when other work shares the machine.
                f"{cpu_ratio:.1f}x = {1 / cpu_ratio:.0%} of bare per core" if cpu_ratio else "n/a",
                f"handler +{agent.get('handler_cpu_per_event_us', 0):.1f} µs",
            )
        )

    for key, lat in (results.get("latency") or {}).items():
        rate = int(key.split("_")[0])
        if "p99_ms" not in lat:
            rows.append(Row(f"latency {key}", f"error: {lat.get('error')}"))
            continue
        target = "p99 ≤ 10 ms" if rate == 5000 else ""
        ok = (lat["p99_ms"] <= 10 and "error" not in lat) if rate == 5000 else None
        floor = ceil.get(f"latency_{rate}") or {}
        floor_text = (
            f"{_num(floor.get('p50_ms'), '{:.2f}')} / {_num(floor.get('p99_ms'), '{:.2f}')} ms" if floor else ""
        )
        behind = "" if lat["achieved_rate"] >= 0.98 * rate else f", publisher only {lat['achieved_rate']:,.0f}/s"
        rows.append(
            Row(
                f"latency publish→result @ {rate:,}/s (QoS {lat['qos']}) p50 / p99",
                f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} ms",
                floor_text,
                f"max {lat['max_ms']:.0f} ms, agent {lat['agent_cpu_share']:.2f} core{behind}",
                target=target,
                ok=ok,
            )
        )

    mem = results.get("memory", {})
    if "idle" in mem:
        rss = mem["idle"]["rss_mib"]
        rows.append(Row("agent RSS idle", f"{rss:.1f} MiB", target="≤ 64 MiB", ok=rss <= 64))
    if "load" in mem:
        hwm = mem["load"]["hwm_mib"]
        rows.append(
            Row(
                "agent RSS under load (VmHWM)",
                f"{hwm:.1f} MiB",
                ratio=f"sampled max {mem['load']['sampled_max_mib']:.1f}",
                target="≤ 80 MiB",
                ok=hwm <= 80,
            )
        )
    if "soak" in mem:
        rows += soak_rows(mem["soak"])

    dead = _get(results, "agent", "dead_letters")
    if dead is not None:
        detail = ", ".join(f"{reason} {n:,}" for reason, n in sorted(dead.items())) or "none"
        rows.append(Row("agent dead letters (all agent phases)", f"{sum(dead.values()):,}", ratio=detail))

    up = results.get("upstream")
    if up is not None:
        if "ratio" in up:
            rows.append(
                Row(
                    f"upstream bytes / raw event bytes ({up['window_s']} s windows @ {up['rate']:,.0f}/s)",
                    f"{up['ratio']:.3%}",
                    ratio=f"aggregates only {up['ratio_aggregates_only']:.3%}",
                    target="≤ 1%",
                    ok=up["ratio"] <= 0.01,
                )
            )
        else:
            rows.append(Row("upstream reduction", f"error: {up.get('error')}"))
    if "workers" in results:
        rows.append(workers_row(results["workers"]))
    return rows + hub_rows(results.get("hub") or {})


def workers_row(w: dict[str, Any]) -> Row:
    """One QoS 1 subscription on N intake workers against one worker (``bench.workers``), preloaded bursts."""
    if "speedup" not in w:
        return Row("agent events/s QoS 1 on intake workers", f"error: {w.get('error')}")
    one, many = w["one"]["best"], w["many"]["best"]
    return Row(
        f"agent events/s QoS 1 on {w['many']['workers']} intake workers (preloaded backlog)",
        _num(many["rate"]),
        f"{_num(one['rate'])} on 1",
        f"{w['speedup']:.2f}x; CPU/event {many['cpu_per_event_us']:.1f} against {one['cpu_per_event_us']:.1f} µs",
        target="≥ 1.4x",
        ok=w["speedup"] >= 1.4,
    )


BOUND = 0.95
"""A figure at 95% or more of its publisher's rate is the publisher's, not the subscriber's."""


def publisher(r: dict[str, Any]) -> str:
    """The publisher's own rate beside a figure, flagged when the figure is within 5% of it (live runs only: a
    preloaded backlog is drained after its publisher finished)."""
    pub = r.get("publisher_rate")
    if pub is None:
        return "publisher n/a"
    if r.get("mode") == "preload":
        return f"preloaded at {pub:,.0f}/s"
    bounded = r.get("rate") is not None and r["rate"] >= BOUND * pub
    return f"publisher {pub:,.0f}/s" + (" [yellow]bounded by publisher[/]" if bounded else "")


def soak_rows(soak: dict[str, Any]) -> list[Row]:
    """p99 per minute, RSS growth and drops of ``--soak`` (``bench.memory.soak``)."""
    if "growth_pct" not in soak:
        return [Row("agent soak", f"error: {soak.get('error')}")]
    rows: list[Row] = []
    minutes, what = soak.get("per_minute") or [], f"{soak['seconds'] / 60:g} min soak @ {soak['rate']:,.0f}/s QoS 1"
    p99s = " ".join(f"{m['p99_ms']:.1f}" for m in minutes)
    over = soak.get("minutes_over_10ms", 0)
    rows.append(Row(
        f"{what}: p99 per minute (worst)", f"{_num(soak.get('worst_p99_ms'), '{:.2f}')} ms",
        ratio=f"{over} of {len(minutes)} minutes over 10 ms: {p99s} ms{_slow_minutes(minutes)}",
        target="≤ 10 ms every minute", ok=bool(minutes) and over == 0,
    ))  # fmt: skip
    trend = f"{soak['rss_1min_mib']:.1f}→{soak['rss_end_mib']:.1f} MiB"
    if soak.get("behind_at_publish_end", 0) > soak["rate"]:
        trend += f", agent {soak['behind_at_publish_end']:,} events behind at the end"
    rows.append(Row(f"{what}: agent RSS growth, first minute → end", f"{soak['growth_pct']:+.1f}%", ratio=trend,
                    target="< 5%", ok=soak["growth_pct"] < 5))  # fmt: skip
    dropped, unacked = soak.get("broker_dropped"), soak.get("publisher_unacked", 0)
    unprocessed = soak.get("unprocessed", 0)
    rows.append(Row(
        f"{what}: events dropped (broker $SYS / unacknowledged)", f"{_num(dropped)} / {unacked:,}",
        ratio=f"{soak['sent']:,} sent at {soak.get('achieved_rate', 0):,.0f}/s, {soak['processed']:,} processed"
        f"{f', {unprocessed:,} not processed in time' if unprocessed > 0 else ''}",
        target="0", ok=dropped == 0 and unacked == 0 and unprocessed <= 0,
    ))  # fmt: skip
    return rows


def _slow_minutes(minutes: list[dict[str, Any]]) -> str:
    """The minutes over 10 ms beside the machine's speed then: the calibration loop's CPU time against its
    median over the soak (1.00x: as fast as usual), and the agent's CPU in cores."""
    calibrations = sorted(m["calibration_us"] for m in minutes if "calibration_us" in m)
    if not calibrations:
        return ""
    median = calibrations[len(calibrations) // 2]
    slow = [
        f"minute {m['index'] + 1}: {m['p99_ms']:.1f} ms, fixed work at {m['calibration_us'] / median:.2f}x its median "
        f"CPU, agent {m['agent_cores']:.2f} cores"
        for m in minutes
        if m["p99_ms"] > 10 and "calibration_us" in m
    ]
    return f" (median calibration {median:,.0f} µs{'; ' if slow else ''}{'; '.join(slow)})"


def hub_rows(hub: dict[str, Any]) -> list[Row]:
    """Ceiling, ingest rate and lag, rollout time (``bench.hub``)."""
    rows: list[Row] = []
    if "error" in hub:
        rows.append(Row("hub figures", f"error: {hub['error']}"))
    ceil, ingest, roll = hub.get("ceiling") or {}, hub.get("ingest"), hub.get("rollout")
    cap = hub.get("capacity")
    if ceil:
        value = f"{_num(ceil.get('rate'))} results/s" if "rate" in ceil else f"error: {ceil.get('error')}"
        detail = f"{_num(ceil.get('cpu_per_record_us'), '{:.1f}')} µs CPU/result, {ceil.get('mib_per_s')} MiB/s"
        rows.append(Row(f"ceiling: bare paho on {ceil.get('devices', '?')} simulated devices' batches", value,
                        ratio=detail if "rate" in ceil else ""))  # fmt: skip
    if cap is not None:
        if cap.get("rate") is None:
            rows.append(Row("hub capacity", f"error: {cap.get('error')}"))
        else:
            full = cap["devices"] >= 1000
            ratio = cap["rate"] / ceil["rate"] if ceil.get("rate") else None
            short = f", only {cap['stored']:,} of {cap['records']:,} stored" if cap["stored"] < cap["records"] else ""
            rows.append(Row(
                f"hub results/s stored at capacity ({cap['devices']:,} devices' backlog of {cap['records']:,})",
                _num(cap["rate"]), _num(ceil.get("rate")),
                f"{_num(ratio, '{:.0%}')}; {cap['hub_cpu_per_record_us']:.0f} µs CPU/result{short}",
                "≥ 20,000/s" if full else "", (cap["rate"] >= 20_000 and not short) if full else None,
            ))  # fmt: skip
    if ingest is not None:
        if "rate" not in ingest:
            return [*rows, Row("hub ingest", f"error: {ingest.get('error')}")]
        full = ingest["devices"] >= 1000
        kept_up = ingest["rate"] / ingest["offered_rate"]
        rows.append(Row(
            f"hub results/s stored, {ingest['devices']:,} devices offering {ingest['offered_rate']:,.0f}/s",
            _num(ingest["rate"]), "",
            f"{kept_up:.1%} of offered; hub {ingest['hub_cpu_cores']} core, "
            f"{ingest['hub_cpu_per_record_us']:.0f} µs/result",
            "keeps up (≥ 99%)" if full else "", (kept_up >= 0.99) if full else None,
        ))  # fmt: skip
        missing, published = ingest["not_stored"], ingest["published_in_window"]
        late = f", {missing:,} of {published:,} not stored when the hub stopped" if missing else ""
        at_least = "≥ " if missing > published / 100 else ""  # the unstored count with their wait so far
        rows.append(Row(
            "hub lag publish→stored p50 / p99",
            f"{at_least}{ingest['p50_ms'] / 1000:.2f} / {at_least}{ingest['p99_ms'] / 1000:.2f} s",
            ratio=f"ack wait p99 {_num(ingest.get('ack_wait_p99_ms'), '{:.0f}')} ms{late}",
            target="p99 ≤ 1 s" if full else "", ok=(ingest["p99_ms"] <= 1000) if full else None,
        ))  # fmt: skip
    if roll is not None:
        if "seconds" not in roll:
            return [*rows, Row("hub rollout", f"error: {roll.get('error')}")]
        steps = "+".join(str(n) for n in roll["steps"])
        rows.append(Row(
            f"hub rollout over {roll['devices']} devices ({steps}), minus soaks",
            f"{roll['seconds']:.1f} s", ratio=f"{roll['state']}; total {roll['total_s']:.1f} s, "
            f"soak {roll['soak_s']:g} s x {len(roll['steps'])}, {roll['per_step_s']:.1f} s/step",
        ))  # fmt: skip
    return rows


def render(rows: list[Row], title: str, console: Console | None = None) -> None:
    table = Table(title=title)
    for column in ("figure", "value", "ceiling", "ratio / detail", "target", "pass"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in rows:
        verdict = "" if row.ok is None else "[green]pass[/]" if row.ok else "[red]FAIL[/]"
        table.add_row(row.figure, row.value, row.ceiling, row.ratio, row.target, verdict)
    (console or Console()).print(table)


def write_json(results: dict[str, Any], rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**results, "table": [asdict(r) for r in rows]}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def render_profiles(results: dict[str, Any], console: Console, top: int = 8) -> None:
    """The hottest functions of each ``--profile`` run (share of GIL-holding samples)."""
    for name, prof in (results.get("profile") or {}).items():
        if "inclusive" not in prof:
            console.print(f"profile {name}: {prof.get('error')}")
            continue
        table = Table(title=f"agent profile {name}: {prof['samples']} GIL samples ({prof['file']})")
        table.add_column("threads")
        table.add_column("inclusive")
        table.add_column("self")
        threads = [f"{t.split(': ', 1)[-1]} {p}%" for t, p in prof["threads"]]
        for i in range(top):
            cells = [threads[i] if i < len(threads) else ""]
            for key in ("inclusive", "self"):
                rows = prof[key]
                cells.append(f"{rows[i][1]:5.1f}% {rows[i][0]}" if i < len(rows) else "")
            table.add_row(*cells)
        console.print(table)
