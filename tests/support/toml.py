"""TOML for the agent and hub configs that tests and the benchmark write (the standard library only reads TOML)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for agent and hub configs: scalars, [tables] and [[arrays of tables]]."""
    head, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]")
            tables += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(f"\n[[{key}]]")
                tables += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items()]
        else:
            head.append(f"{json.dumps(key)} = {_toml_value(value)}")
    return "\n".join(head + tables) + "\n"
