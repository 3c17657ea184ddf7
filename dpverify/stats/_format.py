"""Numbers as people read them in a verdict: ``0``, ``0.98×``, ``1.002×``, ``12×``."""

from __future__ import annotations

import math

__all__ = ["number", "times"]


def times(ratio: float) -> str:
    """A ratio to an expected value: ``"0×"`` below 0.005, enough digits to differ from 1."""
    if not math.isfinite(ratio):
        return "∞×" if ratio > 0 else "undefined"
    if ratio < 0.005:
        return "0×"
    if abs(ratio - 1.0) < 0.01:  # show the departure from 1, not "1×"
        return f"{ratio:.4f}".rstrip("0") + "×"
    if abs(ratio - 1.0) < 0.2:
        return f"{ratio:.3g}×"
    if ratio < 100:
        return f"{ratio:.2g}×"
    return f"{ratio:,.0f}×"


def number(x: float) -> str:
    """A count or expected count: integers as integers, else 3 significant digits, tiny as 0."""
    if not math.isfinite(x):
        return "∞" if x > 0 else "undefined"
    if abs(x - round(x)) < 1e-9 * max(1.0, abs(x)):
        return f"{round(x):,}"
    if abs(x) < 0.005:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"
