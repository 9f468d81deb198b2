"""``--profile``: py-spy samples the agent during extra runs (after the measured ones, which it would slow).

Writes the collapsed stacks (``bench/results/agent-profile-<run>.txt``, loadable in speedscope or
flamegraph.pl) and summarises them: the share of samples in which a function is on the stack (inclusive) or
on top (self), and per thread. Sampled with ``--gil``: only the thread holding the GIL is recorded, so the
shares say where the agent's one usable core goes (a thread waiting in select() or for the GIL is not work).
py-spy is not a project dependency: ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.agentproc import AgentProcess
from bench.procs import REPO, VENV_BIN

# Frames every sample passes through (thread bootstrap, asyncio.run): inclusive shares of ~100% say nothing.
_PLUMBING = (
    "(threading.py)",
    "(runners.py)",
    "(edge-agent)",
    "main (__main__.py)",
    "run_until_complete (base_events.py)",
    "run_forever (base_events.py)",
    "_thread_main (client.py)",
    "loop_forever (client.py)",
)


def py_spy() -> str | None:
    found = VENV_BIN / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({module})" if module else name


def summarise(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Inclusive and self shares of samples per function, and samples per thread."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread, frames = frames[0], [_frame_name(f) for f in frames[1:]]
        total += count
        threads[thread] += count
        for name in set(frames):
            if not name.endswith(_PLUMBING):
                inclusive[name] += count
        if frames:
            own[frames[-1]] += count

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(n / total * 100, 1)) for name, n in counter.most_common(top)] if total else []

    return {"samples": total, "threads": share(threads), "inclusive": share(inclusive), "self": share(own)}


def profiled(
    agent: AgentProcess, name: str, out_dir: Path, work: Callable[[], dict[str, Any]], rate: int = 200
) -> dict[str, Any]:
    """Run ``work`` with py-spy attached to the agent; its figures plus the profile summary."""
    exe = py_spy()
    if exe is None:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    out = out_dir / f"agent-profile-{name}.txt"
    spy = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(agent.pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--gil",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        figures = work()
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        _, err = spy.communicate(timeout=30)
    if not out.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", "figures": figures}
    return {"figures": figures, "file": str(out.relative_to(REPO)), **summarise(out)}
