"""Device labels and label selectors (``site=lyon``, ``tier=edge``): parsing, validation and matching.

A selector is a list of ``key=value`` terms that must all match (an empty selector matches every device). The
same selectors will pick the targets of a rollout, so this module depends on nothing else in the hub.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

KEY_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
MAX_VALUE_LENGTH = 256


class LabelError(ValueError):
    """A label or selector term that does not parse; the message says what is wrong and how to write it."""


def check_key(key: str) -> str:
    """``key`` unchanged when it is a valid label key, else LabelError."""
    if not KEY_PATTERN.match(key):
        raise LabelError(
            f"bad label key {key!r}: use 1-63 letters, digits, '.', '_', '/' or '-', "
            "starting and ending with a letter or digit"
        )
    return key


def check_value(key: str, value: str) -> str:
    """``value`` unchanged when it is a valid label value, else LabelError."""
    if len(value) > MAX_VALUE_LENGTH:
        raise LabelError(f"label {key!r}: a value has at most {MAX_VALUE_LENGTH} characters")
    if any(not ch.isprintable() for ch in value):
        raise LabelError(f"label {key!r}: a value cannot hold control characters")
    return value


def parse_term(term: str) -> tuple[str, str]:
    """``("site", "lyon")`` from ``"site=lyon"``; the value may be empty, the key may not."""
    key, sep, value = term.partition("=")
    if not sep:
        raise LabelError(f"bad label term {term!r}: write key=value, e.g. site=lyon")
    key = key.strip()
    return check_key(key), check_value(key, value.strip())


def parse_assignments(terms: Iterable[str]) -> dict[str, str]:
    """``{"site": "lyon"}`` from ``["site=lyon"]``; a key given twice with two values is an error."""
    labels: dict[str, str] = {}
    for term in terms:
        key, value = parse_term(term)
        if labels.get(key, value) != value:
            raise LabelError(f"label {key!r} given twice with different values")
        labels[key] = value
    return labels


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Validate a mapping (e.g. a JSON body) of labels; returns a plain dict."""
    return {check_key(key): check_value(key, value) for key, value in labels.items()}


@dataclass(frozen=True, slots=True)
class Selector:
    """Terms that must all match a device's labels: ``Selector.parse(["site=lyon", "tier=edge"])``."""

    terms: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, terms: Iterable[str] | None) -> Selector:
        """A selector from ``key=value`` strings; LabelError names the term that does not parse."""
        if not terms:
            return cls()
        return cls(tuple(sorted(parse_assignments(terms).items())))

    def __bool__(self) -> bool:
        return bool(self.terms)

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """True when every term's key is present in ``labels`` with that value."""
        labels = labels or {}
        return all(labels.get(key) == value for key, value in self.terms)

    def __str__(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.terms)
