"""The result every audit check returns: a frozen, JSON-ready :class:`CheckResult`.

Each check (integrity, configuration, sampling, mechanics, privacy, replay) is
a small function that looks at one aspect of a run and returns one
``CheckResult``.  Statuses:

* ``"pass"`` — the aspect was checked and nothing is wrong.
* ``"fail"`` — the aspect was checked and is wrong; the certificate is refuted
  (or unverifiable, for the integrity check).
* ``"warn"`` — checked, nothing refutes the claim, but something deserves a
  reader's attention (e.g. an unsealed ledger, δ ≥ 1/N).
* ``"skip"`` — could not be checked (e.g. replay without checkpoints); the
  reason says why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dpverify._validate import check_choice
from dpverify.errors import InvalidArgument

__all__ = ["CHECK_NAMES", "STATUSES", "CheckResult", "jsonable"]

#: Check statuses, from best to worst in reading order.
STATUSES = ("pass", "warn", "skip", "fail")

#: Names of the checks, in the order the auditor runs them.
CHECK_NAMES = (
    "integrity",
    "configuration",
    "sampling",
    "mechanics",
    "privacy",
    "replay",
    "empirical",
)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars unwrapped, NaN/inf as ``None``.

    Raises:
        InvalidArgument: for a value JSON cannot hold (e.g. an object).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        out = float(value)
        return out if math.isfinite(out) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray) and value.size <= 64:
        return [jsonable(v) for v in value.tolist()]
    raise InvalidArgument(f"value of type {type(value).__name__} cannot be written to JSON")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckResult:
    """The outcome of one audit check.

    Attributes:
        name: the check's name (one of :data:`CHECK_NAMES` for built-in checks).
        status: ``"pass"``, ``"fail"``, ``"warn"`` or ``"skip"``.
        p_value: the smallest relevant p-value when the check is statistical,
            else ``None``.
        reason: one plain-words line a user understands.
        details: JSON-ready figures behind the reason (never sampled indices).
    """

    name: str
    status: str
    reason: str
    p_value: float | None = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgument(f"name={self.name!r} must be a non-empty string")
        check_choice("status", self.status, STATUSES)
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise InvalidArgument(f"reason={self.reason!r} must be a non-empty string")
        object.__setattr__(self, "reason", " ".join(self.reason.split()))
        if self.p_value is not None:
            p = float(self.p_value)
            if not math.isnan(p) and not 0.0 <= p <= 1.0:
                raise InvalidArgument(f"p_value={self.p_value!r} must be in [0, 1]")
            object.__setattr__(self, "p_value", None if math.isnan(p) else p)
        object.__setattr__(self, "details", jsonable(dict(self.details)))

    @property
    def failed(self) -> bool:
        """True when the status is ``"fail"``."""
        return self.status == "fail"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with keys ``name``, ``status``, ``p_value``, ``reason``, ``details``."""
        return {
            "name": self.name,
            "status": self.status,
            "p_value": self.p_value,
            "reason": self.reason,
            "details": dict(self.details),
        }
