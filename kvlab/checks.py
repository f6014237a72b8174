"""Argument checks shared across kvlab's public API: a bad value raises ValueError naming it."""
from __future__ import annotations

import math
from typing import Any


def positive_int(what: str, value: Any) -> int:
    """`value` if it is an int ≥ 1 (bool is not accepted), else ValueError naming `what` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def non_negative_number(what: str, value: Any, whole: bool = False) -> float | int:
    """`value` as a float (whole: as an int, its value integral) if it is a finite number ≥ 0 (bool is not
    accepted), else ValueError naming `what` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} is {value!r}, not a finite number ≥ 0")
    if whole and value != int(value):
        raise ValueError(f"{what} is {value!r}, not a whole number")
    return int(value) if whole else float(value)
