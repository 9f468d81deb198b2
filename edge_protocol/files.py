"""Small files replaced whole, on the device (the agent's run number and desired state) and on the hub (its
signing key, CA, certificates, broker credentials): written so that a crash or a power cut leaves either the
old content or the new, never a torn file, a half-written secret readable by others, nor a rename the
directory forgot."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

DEFAULT_MODE = 0o644
"""A file anyone may read, as one made under the usual umask; secrets pass 0o600."""


def write_atomically(path: Path, data: bytes, mode: int = DEFAULT_MODE) -> None:
    """Write ``data`` to a fresh temporary file beside ``path`` (created 0600), fsync it, give it ``mode``,
    rename it over ``path``, then fsync the directory: without the last step the rename itself may not survive
    a power cut. The directory is created if missing; a failed write removes its temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """fsync a directory, making the renames and creations in it durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
