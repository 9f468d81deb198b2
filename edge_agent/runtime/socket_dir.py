"""Where the agent puts the unix sockets its handlers connect to.

The directory must be one the Docker engine sees too (it bind-mounts a subdirectory into each container), so
not a private /tmp of a systemd service; and its paths must stay short, because a unix socket path ends at
107 bytes. It is the agent's alone (0700): the containers see only their own subdirectory, mounted.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

# The longest path the agent makes below the root: "/edgefleet-io-" + 8 random characters + "/handler.sock".
SOCKET_SUFFIX_MAX = len("/edgefleet-io-") + 8 + len("/handler.sock")
SOCKET_PATH_MAX = 107


def default_socket_root() -> Path:
    """systemd's RuntimeDirectory when the unit sets one, else a directory of this user in the temp dir."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0])
    return Path(tempfile.gettempdir()) / f"edgefleet-agent-{os.geteuid()}"


def prepare_socket_root(path: Path) -> Path:
    """Create ``path`` (0700) if needed; refuse one that is not a directory of ours, or a symlink."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise OSError(f"{path} belongs to uid {info.st_uid}, not to this agent (uid {os.geteuid()})")
    path.chmod(0o700)
    return path
