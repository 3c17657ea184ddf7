"""Strict JSON: what ``json.dumps(..., allow_nan=False)`` accepts."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite"]


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (tuples become lists).

    Strict JSON has no ``Infinity`` or ``NaN``; ``None`` (``null``) reads as
    "no finite value", which is what an infinite ε or a NaN loss means here.
    """
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
