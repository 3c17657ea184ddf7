"""Uniform argument checks: one error type, messages that name field and value."""

from __future__ import annotations

import math
from typing import Any

from dpverify.errors import InvalidArgument


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_probability(name: str, value: Any, *, allow_one: bool = True) -> float:
    """``value`` in (0, 1] (or (0, 1) when ``allow_one`` is false)."""
    upper = "1]" if allow_one else "1)"
    if not _is_number(value) or not math.isfinite(value):
        raise InvalidArgument(f"{name}={value!r} must be a number in (0, {upper}")
    if not (0.0 < value < 1.0 or (allow_one and value == 1.0)):
        raise InvalidArgument(f"{name}={value!r} must be in (0, {upper}")
    return float(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` > 0 (or >= 0 when ``allow_zero``), finite."""
    if not _is_number(value) or not math.isfinite(value):
        raise InvalidArgument(f"{name}={value!r} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        op = ">= 0" if allow_zero else "> 0"
        raise InvalidArgument(f"{name}={value!r} must be {op}")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """Integer ``value`` >= ``minimum`` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise InvalidArgument(f"{name}={value!r} must be an integer >= {minimum}") from None
    if value < minimum:
        raise InvalidArgument(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise InvalidArgument(f"{name}={value!r} must be one of {', '.join(choices)}")
    return str(value)
