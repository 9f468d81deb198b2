"""Group keys of a result: topic levels (``topic[1]``) and fields of the result or the event payload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

GroupKey = Callable[[str, Any, dict[str, Any]], str]


def group_key(keys: list[str]) -> GroupKey:
    """A function of (topic, payload, result values) giving the group string, e.g. ``topic[1]=s1,site=a``."""
    if not keys:
        return lambda _t, _p, _v: ""
    getters: list[tuple[str, Callable[[str, Any, dict[str, Any]], Any]]] = []
    for key in keys:
        if key.startswith("topic["):
            getters.append((key, _level_getter(int(key[6:-1]))))
        else:
            getters.append((key, _field_getter(key)))

    def compute(topic: str, payload: Any, values: dict[str, Any]) -> str:
        return ",".join(f"{name}={get(topic, payload, values)}" for name, get in getters)

    return compute


def _level_getter(level: int) -> Callable[[str, Any, dict[str, Any]], Any]:
    return lambda topic, _payload, _values: _level(topic, level)


def _field_getter(name: str) -> Callable[[str, Any, dict[str, Any]], Any]:
    return lambda _topic, payload, values: _field(name, payload, values)


def _level(topic: str, level: int) -> str:
    parts = topic.split("/")
    return parts[level] if level < len(parts) else ""


def _field(name: str, payload: Any, values: dict[str, Any]) -> Any:
    if name in values:
        return values[name]
    if isinstance(payload, dict):
        return payload.get(name, "")
    return ""
