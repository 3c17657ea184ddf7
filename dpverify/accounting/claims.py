"""Does a claimed (ε, δ) hold for the run?

The accountants establish an interval for the run's ε at the claim's δ:

* **upper** — the smallest valid upper bound any of them gives (RDP,
  pessimistic PLD, PRV's ``upper``; for bracketed schedules each is computed
  on groups that dominate the run).  A claim at or above it *holds*.
* **tight** — the tight estimate when every (q, σ) pair was composed exactly:
  PLD (unless it disagrees with a valid upper bound), else PRV's estimate.  A
  claim within the tolerance below it also holds (the tolerance absorbs the
  last digits of another tight accountant), and a claim below it by more than
  the tolerance is *refuted*.
* **lower** — what the tight accountants establish with their error bounds
  (PRV's ``lower``; for bracketed schedules computed on groups the run
  dominates), or a known lower bound (shuffled batches).  A claim below it is
  refuted.

A claim in between — above every lower bound, below every upper bound and
without a tight estimate to settle it — is neither confirmed nor refuted: it
is *unverifiable* (``verifiable=False``), and the reason gives the interval.
So a claim is never refuted while it is at least some valid upper bound, and
never refuted on the strength of a rounding.
"""

from __future__ import annotations

import dataclasses
import math

from dpverify._validate import check_positive
from dpverify.accounting.report import EpsilonReport

__all__ = ["DEFAULT_TOLERANCE", "ClaimResult", "check_claim"]

#: Absolute slack in ε (the larger of this and ``relative_tolerance``·ε is used).
DEFAULT_TOLERANCE = 1e-3
#: Relative slack in ε.
DEFAULT_RELATIVE_TOLERANCE = 1e-3

_LABELS = {"pld": "PLD", "prv": "PRV", "rdp": "RDP"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClaimResult:
    """The verdict on a claimed ε.

    Attributes:
        holds: the claim is at least a valid upper bound (or within the
            tolerance below the tight estimate).
        reason: one plain-words sentence.
        reference: accountant the decision rests on (``"pld"``, ``"prv"``,
            ``"rdp"``, ``"shuffle_lower_bound"`` or ``"none"``).
        reference_epsilon: its ε (NaN when there is none).
        tolerance: the absolute slack applied.
        verifiable: False when the claim can be neither confirmed nor refuted
            (no upper bound, or the claim lies inside the accountants' interval),
            so ``holds`` is False for want of evidence rather than because of a finding.
    """

    holds: bool
    reason: str
    reference: str
    reference_epsilon: float
    tolerance: float = 0.0
    verifiable: bool = True


def check_claim(
    report: EpsilonReport,
    claimed_epsilon: float,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    relative_tolerance: float = DEFAULT_RELATIVE_TOLERANCE,
) -> ClaimResult:
    """Decide whether ``claimed_epsilon`` (at ``report.delta``) holds.

    Args:
        report: ε recomputed for the run (:func:`compute_epsilon`).
        claimed_epsilon: the run's claim, >= 0.
        tolerance: absolute slack in ε.
        relative_tolerance: relative slack; the slack is
            ``max(tolerance, relative_tolerance · tight)``.

    Returns:
        A :class:`ClaimResult` (module docstring for the rules).
    """
    claimed = check_positive("claimed_epsilon", claimed_epsilon, allow_zero=True)
    tolerance = check_positive("tolerance", tolerance, allow_zero=True)
    relative_tolerance = check_positive("relative_tolerance", relative_tolerance, allow_zero=True)
    delta = report.delta
    at = f"at δ = {delta:g}"
    rounding = f"; {report.rounding}" if report.rounding else ""

    upper, upper_name = report.upper, report.upper_name
    if upper is not None and claimed >= upper:
        label = _LABELS[upper_name or "rdp"]
        return ClaimResult(
            holds=True,
            reason=f"claimed ε = {claimed:g} ≥ the {label} upper bound {upper:.6g} {at}{rounding}",
            reference=upper_name or "none",
            reference_epsilon=float(upper),
        )

    tight, tight_name = report.tight, report.tight_name
    if tight is not None and tight_name is not None:
        slack = max(tolerance, relative_tolerance * tight) if math.isfinite(tight) else 0.0
        label = "PLD" if tight_name == "pld" else "PRV estimate"
        if claimed >= tight - slack:
            return ClaimResult(
                holds=True,
                reason=f"claimed ε = {claimed:g} ≥ {label} ε = {tight:.6g} {at} "
                f"(tolerance {slack:.2g}){rounding}",
                reference=tight_name,
                reference_epsilon=float(tight),
                tolerance=slack,
            )
        # PLD on a coarser grid (many distinct pairs): refuted only beyond its allowance
        allowance = float(report.pld.details.get("grid_allowance", 0.0)) if tight_name == "pld" else 0.0
        if allowance and claimed >= tight * (1 - allowance) - slack:
            return ClaimResult(
                holds=False,
                reason=(
                    f"cannot confirm claimed ε = {claimed:g} {at}: it is below {label} ε = "
                    f"{tight:.6g} by {tight - claimed:.3g}, more than the tolerance {slack:.2g} "
                    f"but within the {allowance:.1%} allowance of PLD's grid "
                    f"{report.pld.details.get('value_discretization_interval', 0):g}{rounding}"
                ),
                reference=tight_name,
                reference_epsilon=float(tight),
                tolerance=slack,
                verifiable=False,
            )
        margin = f", allowance {allowance:.1%} for PLD's grid" if allowance else ""
        return ClaimResult(
            holds=False,
            reason=f"claimed ε = {claimed:g} < {label} ε = {tight:.6g} {at} "
            f"by {tight - claimed:.3g} (tolerance {slack:.2g}{margin}){rounding}",
            reference=tight_name,
            reference_epsilon=float(tight),
            tolerance=slack,
        )

    pld_upper = report.pld.epsilon
    if report.rounding and pld_upper is not None and math.isfinite(pld_upper):
        # PLD on groups rounded to dominate the run: a valid upper bound, as tight as
        # its rounding; within the claims tolerance below it, as for an exact PLD
        slack = max(tolerance, relative_tolerance * pld_upper)
        if claimed >= pld_upper - slack and not report.disagreements:
            return ClaimResult(
                holds=True,
                reason=f"claimed ε = {claimed:g} ≥ PLD's upper bound {pld_upper:.6g} {at} "
                f"less the tolerance {slack:.2g}{rounding}",
                reference="pld",
                reference_epsilon=float(pld_upper),
                tolerance=slack,
            )

    lower = report.lower
    if lower is not None and claimed < lower:
        if report.lower_bound is not None and lower == report.lower_bound and upper is None:
            return ClaimResult(
                holds=False,
                reason=(
                    f"claimed ε = {claimed:g} is below a valid lower bound ε ≥ {lower:.4g} "
                    f"{at} for sampler {report.sampler!r}: the claim is false"
                ),
                reference="shuffle_lower_bound",
                reference_epsilon=float(lower),
            )
        return ClaimResult(
            holds=False,
            reason=(
                f"claimed ε = {claimed:g} is below PRV's lower bound {lower:.6g} {at} "
                f"(eps_error {report.prv.details.get('eps_error', 0):g}){rounding}"
            ),
            reference="prv",
            reference_epsilon=float(lower),
        )

    if upper is not None:
        low_txt = f"{lower:.6g}" if lower is not None else "none established"
        return ClaimResult(
            holds=False,
            reason=(
                f"cannot confirm claimed ε = {claimed:g} {at}: it is below the smallest valid "
                f"upper bound ({_LABELS[upper_name or 'rdp']} {upper:.6g}) and not below "
                f"what the tight accountants establish (lower bound {low_txt}){rounding}"
            ),
            reference=upper_name or "none",
            reference_epsilon=float(upper),
            verifiable=False,
        )

    why = report.pld.reason or "no accountant bounds ε for this run"
    return ClaimResult(
        holds=False,
        reason=f"cannot verify claimed ε = {claimed:g}: {why}",
        reference="none" if lower is None else "shuffle_lower_bound",
        reference_epsilon=math.nan if lower is None else float(lower),
        verifiable=False,
    )
