"""Sampling check: the recorded batches look like the declared sampler.

Runs the statistical battery of :mod:`dpverify.stats` over the ledger:

* every execution enters — a step re-executed after a resume is compared with
  its first execution; one that draws another batch enters with its own batch
  (and is a finding when the sampler is step-addressable);
* each declared sampler with an ε bound is tested against its own null
  (Poisson, truncated Poisson, fixed size, cyclic Poisson), never trusted;
* the battery runs per segment of constant recorded rate, so per-step rates
  are tested, not trusted; a segment too short for the battery is said so.

The battery controls the family-wise false-positive rate at ``alpha`` (split
over the segments).  A failing check leads with the most specific diagnosis
that explains the rejections.  A declared q above the rate the indices show
passes as "conservative" (ε grows with q).

``details["segments"]`` lists every segment with ``passed`` / ``rate_verified``;
``details["rates_verified"]`` is true only when every segment passed with a
meaningful battery — the privacy check may then use the recorded per-step
rates (see ``docs/statistics.md``).

Samplers that have no null (shuffling, balls-in-bins) are not tested here:
the privacy check reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from audits.check import CheckResult

__all__ = ["check_sampling", "last_executions"]

_NAME = "sampling"


def last_executions(steps: Sequence[Any]) -> list[Any]:
    """The last execution of every logical step, ordered by step index."""
    last: dict[int, Any] = {}
    for s in steps:
        last[s.step] = s
    return [last[k] for k in sorted(last)]


def _span(seg: Any, many: bool) -> str:
    if not many:
        return ""
    return f"steps {seg.first_step}-{seg.last_step} (recorded q = {seg.sampling_rate:.6g}): "


def _cannot_see(battery: Any) -> str:
    c = dict(battery.cannot_see)
    parts = []
    if c.get("rate_bias") is not None:
        parts.append(f"a real rate up to {100 * c['rate_bias']:.2g}% above q")
    if c.get("oversampled_examples") is not None:
        parts.append(f"fewer than {c['oversampled_examples']:,} examples sampled at twice the rate")
    else:
        parts.append("any group of examples sampled at twice the rate")
    parts.append(f"correlations between batches {c.get('lags_not_scanned', '')} steps apart")
    return "cannot see: " + ", ".join(parts)


def check_sampling(
    ledger: Any,
    *,
    alpha: float = 1e-3,
    seed: int = 0,
    sampling_result: Callable[[], Any] | None = None,
) -> CheckResult:
    """Test the ledger's batches against the declared sampler.

    Args:
        ledger: a read :class:`dpverify.ledger.Ledger`.
        alpha: family-wise false-positive rate of the battery.
        seed: seed of the battery's own randomness (the audit is reproducible).
        sampling_result: returns the :class:`dpverify.stats.LedgerSampling`
            already computed while the ledger was read (the audit runner's
            one streaming pass, :class:`dpverify.stats.SamplingStream`, with
            the same ``alpha`` and ``seed``); default: computed here.

    Returns:
        ``fail`` leading with the most specific cause; ``warn`` when a segment
        (or the whole run) is too short for the battery; ``skip`` for samplers
        that have no null; else ``pass`` (its reason says "conservative" when the
        declared q is above the rate the indices show).
    """
    from dpverify import stats

    header = ledger.header
    if str(header.sampler).lower() not in stats.NULL_SAMPLERS:
        return CheckResult(
            name=_NAME,
            status="skip",
            reason=(
                f"declared sampler {header.sampler!r} has no sampling null (only "
                f"{', '.join(stats.NULL_SAMPLERS)} do): the privacy check reports it"
            ),
        )
    if sampling_result is not None:
        result = sampling_result()
    else:
        result = stats.sampling_from_ledger(ledger, alpha=alpha, seed=seed)
    segs = result.segments
    many = len(segs) > 1
    first_battery = segs[0].battery if segs else None
    details: dict[str, Any] = {
        "alpha": alpha,
        "correction": "holm within a segment, Bonferroni over segments",
        "sampler": result.null.sampler,
        "executions": result.executions,
        "logical_steps": result.logical_steps,
        "reproduced_executions": result.reproduced,
        "redrawn_executions": result.redrawn,
        "findings": list(result.findings),
        "rates_verified": result.rates_verified,
        "segments": [s.to_dict() for s in segs],
    }
    if first_battery is not None:
        details["min_detectable_relative_bias"] = first_battery.min_detectable_relative_bias
        details["cannot_see"] = dict(first_battery.cannot_see)
        # every segment's tests, each tagged with its segment (index and step span)
        details["tests"] = [
            {
                "name": t.name,
                "segment": k,
                "first_step": s.first_step,
                "last_step": s.last_step,
                "statistic": t.statistic,
                "p_value": t.p_value,
                "adjusted_p_value": t.adjusted_p_value,
                "meaningful": bool(t.meaningful),
                "rejected": bool(t.rejected),
                "sensitive_to": t.sensitive_to,
                "reason": t.reason,
            }
            for k, s in enumerate(segs)
            for t in s.battery.tests
        ]
    p_values = [
        t.p_value for s in segs for t in s.battery.tests if t.meaningful and t.p_value is not None
    ]
    p_min = min(p_values) if p_values else None
    label = result.null.label()
    failed = [s for s in segs if s.status == "fail"]
    if result.findings or failed:
        parts = list(result.findings)
        names: list[str] = []
        for s in failed:
            parts.append(f"{_span(s, many)}{s.battery.diagnosis}")
            names += [t.name for t in s.battery.failures]
        tests_txt = f" [{', '.join(dict.fromkeys(names))}]" if names else ""
        return CheckResult(
            name=_NAME,
            status="fail",
            p_value=min((t.p_value for s in failed for t in s.battery.failures), default=p_min),
            reason=f"not {label} sampling: {'; '.join(parts)}{tests_txt}",
            details=details,
        )
    short = [s for s in segs if s.status == "too_short"]
    if not segs or len(short) == len(segs):
        return CheckResult(
            name=_NAME,
            status="warn",
            p_value=p_min,
            reason=(
                f"too few steps to test the sampling: no test of the {label} battery had enough "
                "data; the declared sampler and rate are unverified"
            ),
            details=details,
        )
    conservative = [s for s in segs if s.battery.conservative]
    cons_txt = ""
    if conservative:
        s = conservative[0]
        cons_txt = (
            f"; conservative: the indices show a rate of {s.battery.observed_rate:.4g}, below the "
            f"declared q = {s.sampling_rate:g} (ε grows with q, so the claim over-states it)"
        )
    seg_txt = f" in all {len(segs)} segments of constant recorded rate" if many else ""
    if short:
        spans = ", ".join(f"steps {s.first_step}-{s.last_step}" for s in short)
        return CheckResult(
            name=_NAME,
            status="warn",
            p_value=p_min,
            reason=(
                f"consistent with {label} sampling where tested, but {len(short)} segment(s) of "
                f"constant recorded rate are too short for the battery ({spans}): their rates "
                f"are unverified{cons_txt}"
            ),
            details=details,
        )
    rates = f"q = {segs[0].sampling_rate:g}" if not many else "each segment's recorded q"
    return CheckResult(
        name=_NAME,
        status="pass",
        p_value=p_min,
        reason=(
            f"consistent with {label} sampling at {rates}{seg_txt}: no rejection at α = {alpha:g}"
            f"{cons_txt}; {_cannot_see(first_battery)}"
        ),
        details=details,
    )
