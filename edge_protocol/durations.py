"""Human durations such as ``10s``, ``1m``, ``1h30m`` or ``250ms``, parsed to float seconds."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``text``: a number of seconds, or parts like ``1h30m``, ``10s``, ``250ms``."""
    if isinstance(text, bool):
        raise ValueError("a duration is a number of seconds or a string like '10s'")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        cleaned = text.strip().replace(" ", "")
        try:
            seconds = float(cleaned)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(cleaned):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(cleaned) or not cleaned:
                raise ValueError(f"not a duration: {text!r} (use e.g. '10s', '1m', '1h30m', '250ms')") from None
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite: {text!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` (``10s``, ``1m``, ``1.5s``)."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    # repr is the shortest text that reads back to the same float ('{:g}' kept 6 digits and used exponents,
    # which parse_duration does not read); Decimal spells an exponent form out in plain digits.
    return f"{Decimal(repr(float(seconds))):f}s"


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
"""A float of seconds that accepts ``'10s'``-style strings and serialises back to them."""
