"""Argument checks shared across kvlab's public API: a bad value raises ValueError naming it."""
from __future__ import annotations

from typing import Any


def positive_int(what: str, value: Any) -> int:
    """`value` if it is an int ≥ 1 (bool is not accepted), else ValueError naming `what` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value
