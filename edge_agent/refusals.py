"""What the reconciler remembers of the desired-state versions it did not run, and when it tries one again.

A version refused for cause -- a handler that failed its health ping, did not start, crash-looped on probation,
or whose pull failed for a reason in the image itself (a layer failing its digest check, an unknown manifest) --
is not tried again: not on its retained re-deliveries, not after a restart. The refusal (version, SHA-256 of the
envelope, step, handler, image, reason) is kept beside the last good document (``desired.refused.json``) and
read back at start, so the retained copy of a document that failed its probation does not run a second full
probation after every reboot.

A refusal for a passing reason -- a pull that could not reach the registry or the engine (a network error,
:func:`edge_agent.staging.transient_pull_failure`), or a received copy that could not be written (disk full) --
is tried again after a backoff (``retry_after`` doubling up to ``retry_max``), and is not written to disk: a
restart tries it again at once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from pydantic import ValidationError

from edge_protocol.messages import DesiredRefusal

log = logging.getLogger(__name__)


def refused_path(store_path: Path) -> Path:
    """Where a refusal for cause is kept, beside the last good document (``desired.json``)."""
    return store_path.with_name(store_path.stem + ".refused" + store_path.suffix)


@dataclass(slots=True)
class Retry:
    """A version refused for a passing reason: tried again once ``due`` (monotonic) has passed."""

    version: int
    attempts: int
    due: float


class RefusalMemory:
    """The last refusal reported (``refused``), the one kept for cause, and the pending retry of a passing one."""

    def __init__(
        self,
        path: Path,
        *,
        retry_after: float = 30.0,
        retry_max: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.refused: DesiredRefusal | None = None
        """The last version refused (reported as ``desired_refused``), for cause or not."""
        self.retry: Retry | None = None
        self._retry_after = retry_after
        self._retry_max = retry_max
        self._clock = clock

    def load(self) -> None:
        """The refusal for cause kept by an earlier run, if any (blocking: run it in a thread)."""
        try:
            data = orjson.loads(self.path.read_bytes())
            self.refused = DesiredRefusal.model_validate(data["refusal"])
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
            log.error("kept desired-state refusal %s unreadable (%s): ignored", self.path, exc)
            return
        log.info("desired state version %d was refused for cause by an earlier run", self.refused.version)

    def blocks(self, version: int) -> bool:
        """True when ``version`` must not be tried now: refused for cause, or its retry not yet due."""
        if self.refused is None or self.refused.version != version:
            return False
        retry = self.retry
        if retry is not None and retry.version == version:
            return self._clock() < retry.due
        return True

    def for_cause(self, refusal: DesiredRefusal, envelope: bytes) -> bytes:
        """Remember ``refusal`` for good; the bytes to keep at ``path`` (the caller writes them)."""
        self.refused = refusal
        self.retry = None
        record = {"refusal": refusal.model_dump(mode="json"), "envelope_sha256": hashlib.sha256(envelope).hexdigest()}
        return orjson.dumps(record, option=orjson.OPT_INDENT_2)

    def passing(self, version: int, refusal: DesiredRefusal | None = None) -> float:
        """A refusal of ``version`` for a passing reason: the delay before it is tried again (doubling)."""
        if refusal is not None:
            self.refused = refusal
        earlier = self.retry
        attempts = earlier.attempts + 1 if earlier is not None and earlier.version == version else 1
        delay = min(math.ldexp(self._retry_after, attempts - 1), self._retry_max)
        self.retry = Retry(version, attempts, self._clock() + delay)
        return delay
