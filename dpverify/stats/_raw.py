"""A test's outcome before the family-wise correction."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["RawTest"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RawTest:
    """What one test found; the battery adds the Holm decision.

    ``failure`` is the plain-words reason used if the test is rejected (it may
    depend on the direction of the departure); ``note`` explains a test that
    is not meaningful.  ``weight`` is the test's share of α in the weighted
    Holm procedure (1 for every test except ``repeated_batches``).
    """

    name: str
    statistic: float
    p_value: float
    sensitive_to: str
    meaningful: bool
    failure: str
    note: str = ""
    weight: float = 1.0
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def insufficient(cls, name: str, sensitive_to: str, note: str, **extra: Any) -> RawTest:
        """A test that had too little data to mean anything (never rejects)."""
        return cls(
            name=name,
            statistic=float("nan"),
            p_value=1.0,
            sensitive_to=sensitive_to,
            meaningful=False,
            failure="",
            note=note,
            **extra,
        )
