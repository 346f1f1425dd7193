"""Small option validators shared by the built-in rewards (raise ValueError with the option's name)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def number(options: Mapping[str, Any], name: str, *, minimum: float | None = None, integer: bool = False) -> None:
    """If ``name`` is set, it must be a finite number (an int if ``integer``), at least ``minimum``."""
    if name not in options:
        return
    value = options[name]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ValueError(f"option {name!r} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"option {name!r} must be >= {minimum}, got {value!r}")


def choice(options: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    if name in options and options[name] not in allowed:
        raise ValueError(f"option {name!r} must be one of {allowed}, got {options[name]!r}")


def boolean(options: Mapping[str, Any], name: str) -> None:
    if name in options and not isinstance(options[name], bool):
        raise ValueError(f"option {name!r} must be true or false, got {options[name]!r}")
