"""Reading the agent's Prometheus endpoint."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, sample: str, **labels: str) -> float | None:
    """One sample of a Prometheus endpoint (e.g. the agent's ``[status] listen``); None when absent or down."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None
