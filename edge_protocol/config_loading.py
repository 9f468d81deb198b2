"""How the agent and the hub load their configs: a TOML file, then ``EDGEFLEET_<PROGRAM>_*`` environment overrides.

Both programs load the same way so that an operator learns it once: ``load_config(path, **overrides)`` reads the
file, the environment overrides it (``EDGEFLEET_HUB_BROKER__PORT=1884``: ``__`` descends into a table), and any
problem raises the program's ConfigError with one ``field.path: reason`` line each, before anything starts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

Settings = TypeVar("Settings", bound="EnvOverFile")


def settings_config(env_prefix: str) -> SettingsConfigDict:
    """The model config of a program's settings: ``env_prefix`` (e.g. ``EDGEFLEET_AGENT_``), ``__`` for nesting,
    unknown keys refused (a misspelt key must fail loudly rather than silently fall back to a default), frozen."""
    return SettingsConfigDict(env_prefix=env_prefix, env_nested_delimiter="__", extra="forbid", frozen=True)


class EnvOverFile(BaseSettings):
    """Settings whose environment variables override the file's values (which arrive as init values)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win, so the environment comes first. No .env or secrets-dir lookups: explicit is better.
        return env_settings, init_settings


def format_errors(exc: ValidationError) -> list[str]:
    """One ``field.path: message`` line per validation error."""
    lines = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"{path}: {err['msg']}")
    return lines


def read_toml(path: str | Path, error: Callable[[list[str]], Exception]) -> dict[str, Any]:
    """The file's tables; ``error([line])`` is raised when it cannot be read or is not TOML."""
    try:
        with Path(path).open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise error([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise error([f"{path}: not valid TOML: {exc}"]) from None


def load_settings(
    cls: type[Settings],
    path: str | Path | None,
    error: Callable[[list[str]], Exception],
    overrides: dict[str, Any],
) -> Settings:
    """``cls`` from ``path`` (TOML; None for defaults) with ``overrides`` on top of the file's top-level keys and
    the environment over both; ``error(lines)`` lists every problem."""
    data = read_toml(path, error) if path is not None else {}
    data.update(overrides)
    try:
        return cls(**data)
    except ValidationError as exc:
        raise error(format_errors(exc)) from None
