"""Topic -> subscriptions, with a bounded cache of topics already seen (matching filters costs per level)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from edge_protocol.topics import topic_matches

T = TypeVar("T")


class Router(Generic[T]):
    """Maps a topic to every target whose filter matches it."""

    def __init__(self, routes: Sequence[tuple[str, T]], cache_size: int = 10_000) -> None:
        self._routes = list(routes)
        self._cache: dict[str, list[T]] = {}
        self._cache_size = cache_size

    def match(self, topic: str) -> list[T]:
        hit = self._cache.get(topic)
        if hit is None:
            hit = [target for flt, target in self._routes if topic_matches(flt, topic)]
            if len(self._cache) >= self._cache_size:
                # Unbounded topic spaces (ids in topics) must not grow memory: start the cache over.
                self._cache.clear()
            self._cache[topic] = hit
        return hit

    def filters(self) -> list[str]:
        return sorted({flt for flt, _ in self._routes})
