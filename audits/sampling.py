"""Sampling check: the recorded batches look like the declared Poisson sampler.

Runs the statistical battery of :mod:`dpverify.stats` (ARCHITECTURE.md §5) over
the ledger, one execution per logical step (steps re-executed after a resume
re-draw the same batch by design).  A declared truncated-Poisson sampler is
tested against the Binomial truncated at its declared cap.  The battery
controls the family-wise false-positive rate at ``alpha``; a failing check
quotes the battery's plain-words reason for its most significant rejection.

Samplers that are not Poisson at all (shuffling, fixed-size without
replacement, balls-in-bins) are not tested here: the battery's null is Poisson,
and the privacy check accounts (or refutes) them as declared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from audits.check import CheckResult
from audits.configuration import POISSON_SAMPLERS

__all__ = ["check_sampling", "last_executions"]

_NAME = "sampling"
_LABELS = {"poisson": "Poisson", "truncated_poisson": "truncated Poisson"}


def last_executions(steps: Sequence[Any]) -> list[Any]:
    """The last execution of every logical step, ordered by step index."""
    last: dict[int, Any] = {}
    for s in steps:
        last[s.step] = s
    return [last[k] for k in sorted(last)]


def _battery(ledger: Any, *, alpha: float, seed: int) -> Any:
    from dpverify import stats

    # N, q and a declared cap (truncated Poisson) come from the header.
    return stats.battery_from_ledger(ledger, alpha=alpha, seed=seed)


def check_sampling(ledger: Any, *, alpha: float = 1e-3, seed: int = 0) -> CheckResult:
    """Test the ledger's batches against the declared sampler.

    Args:
        ledger: a read :class:`dpverify.ledger.Ledger`.
        alpha: family-wise false-positive rate of the battery.
        seed: seed of the battery's Monte-Carlo tests (the audit is reproducible).

    Returns:
        ``fail`` quoting the battery's reason when it rejects; ``warn`` when
        no test had enough data to be meaningful; ``skip`` for samplers that
        are not Poisson or per-step sampling rates that vary; else ``pass``.
    """
    header = ledger.header
    if header.sampler not in POISSON_SAMPLERS:
        return CheckResult(
            name=_NAME,
            status="skip",
            reason=(
                f"declared sampler {header.sampler!r} is not Poisson: the battery tests "
                "Poisson sampling only; the privacy check accounts the sampler as declared"
            ),
        )
    rates = {s.sampling_rate for s in ledger.steps if s.sampling_rate is not None}
    if rates - {header.sampling_rate}:
        return CheckResult(
            name=_NAME,
            status="skip",
            reason="the sampling rate changes between steps: the battery assumes one rate",
        )
    result = _battery(ledger, alpha=alpha, seed=seed)
    tests = tuple(result.tests)
    meaningful = [t for t in tests if t.meaningful]
    p_values = [t.p_value for t in meaningful if t.p_value is not None]
    details = {
        "alpha": result.alpha,
        "correction": result.correction,
        "min_detectable_relative_bias": result.min_detectable_relative_bias,
        "logical_steps": len(last_executions(ledger.steps)),
        "tests": [
            {
                "name": t.name,
                "statistic": t.statistic,
                "p_value": t.p_value,
                "meaningful": bool(t.meaningful),
                "rejected": bool(t.rejected),
                "sensitive_to": t.sensitive_to,
                "reason": t.reason,
            }
            for t in tests
        ],
    }
    p_min = min(p_values) if p_values else None
    if not result.passed:
        failures = sorted(result.failures, key=lambda t: (t.p_value is None, t.p_value or 0.0))
        first = failures[0]
        others = (
            f" (also rejected: {', '.join(t.name for t in failures[1:])})"
            if len(failures) > 1
            else ""
        )
        return CheckResult(
            name=_NAME,
            status="fail",
            p_value=first.p_value if first.p_value is not None else p_min,
            reason=f"not Poisson sampling: {first.reason} [{first.name}]{others}",
            details=details,
        )
    bias = result.min_detectable_relative_bias
    bias_txt = f"; smallest detectable bias in q ≈ {100 * bias:.2g}%" if bias else ""
    if not meaningful:
        return CheckResult(
            name=_NAME,
            status="warn",
            p_value=p_min,
            reason=(
                f"too few steps to test the sampling: none of the {len(tests)} tests had "
                "enough data"
            ),
            details=details,
        )
    return CheckResult(
        name=_NAME,
        status="pass",
        p_value=p_min,
        reason=(
            f"consistent with {_LABELS.get(header.sampler, header.sampler)} sampling at q = "
            f"{header.sampling_rate:g}: no rejection at α = {result.alpha:g} "
            f"({len(meaningful)} of {len(tests)} tests had enough data){bias_txt}"
        ),
        details=details,
    )
