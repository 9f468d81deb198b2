"""forkbomb: on each event, forks child processes until fork fails, then answers with how many it made.

A test of the pids limit: the handler container is capped at ``limits.pids`` tasks, so the loop must stop
there (fork fails with EAGAIN) instead of exhausting the host's pid space. Each child blocks on a pipe and
exits once the parent closes it; the parent reaps them all before answering, so the container is back to a
single process and answers the next event the same way. Values: ``forks`` (children made), ``errno`` (of the
fork that failed: 11 is EAGAIN), ``reaped``. ``MAX_FORKS`` (default 4096) is a safety stop for use without a
pids limit.
"""

from __future__ import annotations

import os
from typing import Any

from edge_handler import Event, run

MAX_FORKS = int(os.environ.get("MAX_FORKS", "4096"))


def handle(event: Event) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    children: list[int] = []
    error = 0
    try:
        while len(children) < MAX_FORKS:
            try:
                pid = os.fork()
            except OSError as exc:  # BlockingIOError (EAGAIN) at the pids limit, or ENOMEM
                error = exc.errno or -1
                break
            if pid == 0:  # the child: wait until the parent closes the pipe, touch nothing else
                os.close(write_end)
                try:
                    os.read(read_end, 1)
                finally:
                    os._exit(0)
            children.append(pid)
    finally:
        os.close(write_end)
        os.close(read_end)
        reaped = 0
        for pid in children:
            os.waitpid(pid, 0)
            reaped += 1
    return {"forks": len(children), "errno": error, "reaped": reaped}


if __name__ == "__main__":
    run(handle)
