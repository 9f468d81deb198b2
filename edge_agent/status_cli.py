"""``edge-agent status``: what a running agent reports, read from its local status endpoint."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url.rstrip('/')}/status", timeout=timeout) as resp:  # noqa: S310 - loopback URL
        data: dict[str, Any] = json.load(resp)
        return data


def show(url: str, as_json: bool) -> int:
    try:
        report = fetch(url)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        print(f"edge-agent: no status at {url}: {exc} (is the agent running with [status] listen set?)",
              file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{report['device']}[/] agent {report['agent_version']}, desired state "
                  f"v{report.get('applied_version') or '-'}, outbox {report['outbox_pending']} pending"
                  + (f", [red]alarms: {', '.join(report['alarms'])}[/]" if report["alarms"] else ""))
    handlers = Table("handler", "state", "restarts", "processed", "errors", "lag ms", "image", title="handlers")
    for h in report["handlers"]:
        handlers.add_row(h["name"], h["state"], str(h["restarts"]), str(h["processed"]), str(h["errors"]),
                         f"{h['lag_ms']:.1f}" if h.get("lag_ms") is not None else "-", h["image"])
    console.print(handlers)
    subs = Table("subscription", "received", "processed", "dead letters", "drops", "backlog", "lost (outbox)",
                 title="subscriptions")
    for name, s in report["subscriptions"].items():
        lost = sum(report["losses"].get(name, {}).values())
        subs.add_row(name, str(s["received"]), str(s["processed"]), str(sum(s["dead_lettered"].values())),
                     str(s["dropped_overflow"]), str(s["backlog"]), str(lost))
    console.print(subs)
    if report.get("last_refusal"):
        console.print(f"last refused desired state: {report['last_refusal']}")
    return 0
