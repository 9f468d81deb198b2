"""Release version names: what a handler release may be called (pure, so the API schemas can check it)."""

from __future__ import annotations

import re

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def check_version(version: str) -> str:
    """``version`` if it is a valid release name; ValueError says what one looks like."""
    if not VERSION_PATTERN.match(version):
        raise ValueError(f"bad release version {version!r}: 1-64 letters, digits, '.', '_', '+' or '-'")
    return version
