"""``edge-agent run --config FILE``: the daemon's entry point, and the only place with signal handlers.

argparse rather than typer: the daemon's imports are part of its memory budget on a small device.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from pathlib import Path

from edge_agent import __version__
from edge_agent.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="edgefleet edge agent")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", type=Path, required=True, help="agent config file (TOML)")
    run.add_argument("--log-level", default="INFO")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", type=Path, required=True)
    status = sub.add_parser("status", help="show a running agent's handlers, subscriptions and outbox")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the agent's config (its [status] listen address)")
    where.add_argument("--url", help="the status endpoint, e.g. http://127.0.0.1:9750")
    status.add_argument("--json", action="store_true", help="the reported state as JSON")
    sub.add_parser("worker", help="an intake worker (started by the agent, which sends its assignment on stdin)")
    return parser


async def _run_until_signalled(config: object) -> None:
    from edge_agent.agent import serve
    from edge_agent.config import AgentConfig
    from mqtt_session.signals import handle_signals

    assert isinstance(config, AgentConfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signals = 0

    def on_signal(_signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop.set()
        elif task is not None:
            # A second signal forces: cancel whatever the drain is still waiting for.
            task.cancel()

    restore = handle_signals(loop, on_signal)
    try:
        await serve(config, stop=stop)
    finally:
        restore()


def _status(args: argparse.Namespace) -> int:
    from edge_agent.config import load_config
    from edge_agent.status_cli import show

    if args.url:
        return show(args.url, args.json)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"edge-agent: invalid config: {line}", file=sys.stderr)
        return 2
    if not config.status.listen:
        print(f"edge-agent: {args.config} sets no [status] listen address", file=sys.stderr)
        return 2
    return show(f"http://{config.status.listen}", args.json)


def _worker(_args: argparse.Namespace) -> int:
    from edge_agent.workers.child import main as worker_main

    return worker_main()


_OWN_CONFIG = {"status": _status, "worker": _worker}
"""Commands that read no config file of their own (worker: the agent sends its assignment on stdin)."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from edge_agent.config import load_config

    if args.command in _OWN_CONFIG:
        return _OWN_CONFIG[args.command](args)

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"edge-agent: invalid config: {line}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: valid ({len(config.subscriptions)} subscriptions, {len(config.handlers)} handlers)")
        return 0
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _freeze_gc()
    try:
        asyncio.run(_run_until_signalled(config))
    except asyncio.CancelledError:
        return 130
    except KeyboardInterrupt:
        return 130
    return 0


def _freeze_gc() -> None:
    """Move what the imports and the config left into the GC's permanent generation: full collections then
    skip it (it lives as long as the daemon anyway). The hub also raises the GC's thresholds; here that showed
    no gain beyond the run-to-run spread and costs memory, which a device has less of."""
    gc.collect()
    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
