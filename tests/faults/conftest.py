"""Fault-suite fixtures: how long outages last.

By default outages are short, so the whole suite runs in a few minutes; ``--soak`` (declared in the root
``tests/conftest.py``, where pytest options must live) lengthens them, e.g. the cloud broker down for 60 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Outages:
    soak: bool

    def pick(self, short: float, soak: float) -> float:
        """``short`` seconds in a default run, ``soak`` seconds with ``--soak``."""
        return soak if self.soak else short


@pytest.fixture
def outages(request: pytest.FixtureRequest) -> Outages:
    return Outages(soak=bool(request.config.getoption("--soak")))
