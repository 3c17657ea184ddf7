"""Frozen results of the Poisson-compliance battery."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from dpverify.errors import InvalidArgument

__all__ = ["BatteryResult", "TestResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TestResult:
    """One statistical test of the Poisson assumption.

    Attributes:
        name: short identifier, e.g. ``"batch_size_dispersion"``.
        statistic: the test statistic's observed value.
        p_value: the test's own p-value (before the family-wise correction).
        sensitive_to: what departures from Poisson sampling the test catches.
        meaningful: whether the run had enough data for the test's null
            approximation to hold and for it to have power; a test that is
            not meaningful reports ``p_value=1.0`` unless its evidence is
            exact (e.g. a batch larger than a declared cap).
        rejected: whether the battery rejects this test at its family-wise α.
        reason: plain words: what the failure suggests, why the test could
            not be used, or that it is consistent with Poisson sampling.
        adjusted_p_value: the Holm-adjusted p-value (compare with α).
        details: JSON-serialisable extra numbers (expected values, lags...).
    """

    __test__ = False  # not a pytest test class

    name: str
    statistic: float
    p_value: float
    sensitive_to: str
    meaningful: bool
    rejected: bool
    reason: str
    adjusted_p_value: float = 1.0
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0.0 <= self.p_value <= 1.0) or math.isnan(self.p_value):
            raise InvalidArgument(f"p_value={self.p_value!r} must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (non-finite statistics become ``None``)."""
        stat = self.statistic if math.isfinite(self.statistic) else None
        return {
            "name": self.name,
            "statistic": stat,
            "p_value": self.p_value,
            "adjusted_p_value": self.adjusted_p_value,
            "sensitive_to": self.sensitive_to,
            "meaningful": self.meaningful,
            "rejected": self.rejected,
            "reason": self.reason,
            "details": dict(self.details),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatteryResult:
    """The battery's verdict on one stream of batches.

    Attributes:
        tests: every test, in battery order (T1 ... T10).
        alpha: family-wise false-positive rate controlled.
        correction: ``"holm"`` (Holm 1979, weighted step-down Bonferroni).
        dataset_size, sampling_rate, cap: the null tested.
        steps: number of batches T; indices: total recorded indices.
        min_detectable_relative_bias: the smallest relative bias |q̂/q − 1| in
            the sampling rate that the total-count test detects with
            probability 0.8 at the battery's per-test level α/K, i.e.
            ``(z_{1−α/K} + z_{0.8}) · sqrt((1 − q)/(N T q))`` (one-sided: only a
            rate above the declared one refutes).
        sampler, sampler_label: the declared sampler tested, and its plain name.
        observed_rate: the overall rate the indices show (inclusions / (N T)
            for Poisson; per group step over b for cyclic Poisson).
        conservative: the indices show a rate significantly *below* the
            declared q and nothing rejected: ε computed at q over-states it.
        diagnosis: for a failed battery, the most specific cause explaining
            the rejections (see :mod:`dpverify.stats._diagnosis`), else "".
        cannot_see: what this run's battery could not have detected, as
            numbers: ``rate_bias`` (smallest relative excess of the real rate
            detectable), ``oversampled_examples`` (smallest number of examples
            at twice the rate detectable, ``None`` if none), ``max_lag``.
    """

    tests: tuple[TestResult, ...]
    alpha: float
    correction: str
    dataset_size: int
    sampling_rate: float
    steps: int
    indices: int
    min_detectable_relative_bias: float
    cap: int | None = None
    sampler: str = "poisson"
    sampler_label: str = "Poisson"
    observed_rate: float | None = None
    conservative: bool = False
    diagnosis: str = ""
    cannot_see: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise InvalidArgument(f"alpha={self.alpha!r} must be in (0, 1)")
        if self.correction not in ("holm", "bonferroni"):
            raise InvalidArgument(f"correction={self.correction!r} must be one of holm, bonferroni")
        if any(not isinstance(t, TestResult) for t in self.tests):
            raise InvalidArgument("tests must hold TestResult values")
        object.__setattr__(self, "tests", tuple(self.tests))

    @property
    def passed(self) -> bool:
        """No test rejected at the family-wise level α."""
        return not self.failures

    @property
    def failures(self) -> tuple[TestResult, ...]:
        return tuple(t for t in self.tests if t.rejected)

    @property
    def underpowered(self) -> tuple[TestResult, ...]:
        """Tests the run was too small for (they could not have failed)."""
        return tuple(t for t in self.tests if not t.meaningful)

    def test(self, name: str) -> TestResult:
        """The test called ``name``."""
        for t in self.tests:
            if t.name == name:
                return t
        raise InvalidArgument(
            f"test={name!r} must be one of {', '.join(t.name for t in self.tests)}"
        )

    def explain(self) -> str:
        """A few human lines: the verdict, then each failure and each unusable test."""
        head = (
            f"{'PASS' if self.passed else 'FAIL'}: {len(self.failures)} of {len(self.tests)} tests "
            f"reject {self.sampler_label} sampling at family-wise alpha={self.alpha:g} "
            f"(N={self.dataset_size}, q={self.sampling_rate:g}, T={self.steps}"
            + (f", cap={self.cap}" if self.cap is not None else "")
            + ")"
        )
        lines = [head]
        if self.diagnosis:
            lines.append(f"  cause: {self.diagnosis}")
        for t in self.failures:
            lines.append(f"  x {t.name} (p={t.p_value:.3g}): {t.reason}")
        for t in self.underpowered:
            if not t.rejected:
                lines.append(f"  ? {t.name}: {t.reason}")
        lines.append(
            f"  smallest detectable relative bias in q: {self.min_detectable_relative_bias:.3g}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "alpha": self.alpha,
            "correction": self.correction,
            "dataset_size": self.dataset_size,
            "sampling_rate": self.sampling_rate,
            "cap": self.cap,
            "steps": self.steps,
            "indices": self.indices,
            "min_detectable_relative_bias": (
                self.min_detectable_relative_bias
                if math.isfinite(self.min_detectable_relative_bias)
                else None
            ),
            "failures": [t.name for t in self.failures],
            "sampler": self.sampler,
            "observed_rate": self.observed_rate,
            "conservative": self.conservative,
            "diagnosis": self.diagnosis,
            "cannot_see": dict(self.cannot_see),
            "tests": [t.to_dict() for t in self.tests],
        }
