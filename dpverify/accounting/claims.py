"""Does a claimed (ε, δ) hold for the run?

A claim holds when ``claimed ε ≥ reference ε − tolerance`` at the claim's δ,
where the reference is the *tight* estimate: PLD (pessimistic), else PRV's
upper bound.  The tolerance absorbs the disagreement between numerically tight
accountants (PLD discretisation, PRV's ``eps_error``): a claim computed with
another tight accountant should not be refuted for its last digits.  RDP is an
upper bound: it is reported, never used to refute; a claim at or above RDP
holds even where no tight accountant answered.  When nothing gives an upper
bound (shuffled batches), the claim cannot be verified; if it is below a known
lower bound it is refuted outright.
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClaimResult:
    """The verdict on a claimed ε.

    Attributes:
        holds: the claim is at least the reference ε (within the tolerance).
        reason: one plain-words sentence.
        reference: accountant used (``"pld"``, ``"prv"``, ``"rdp"``,
            ``"shuffle_lower_bound"`` or ``"none"``).
        reference_epsilon: its ε (NaN when there is none).
        tolerance: the absolute slack applied.
        verifiable: False when no accountant bounds ε from above, so ``holds``
            is False for want of evidence rather than because of a finding.
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
            ``max(tolerance, relative_tolerance · reference)``.

    Returns:
        A :class:`ClaimResult`.
    """
    claimed = check_positive("claimed_epsilon", claimed_epsilon, allow_zero=True)
    tolerance = check_positive("tolerance", tolerance, allow_zero=True)
    relative_tolerance = check_positive("relative_tolerance", relative_tolerance, allow_zero=True)
    delta = report.delta

    name = report.tight_name
    if name is not None:
        ref = float(report.tight)
        slack = max(tolerance, relative_tolerance * ref) if math.isfinite(ref) else 0.0
        label = "PLD" if name == "pld" else "PRV upper bound"
        if claimed >= ref - slack:
            return ClaimResult(
                holds=True,
                reason=f"claimed ε = {claimed:g} ≥ {label} ε = {ref:.6g} at δ = {delta:g} "
                f"(tolerance {slack:.2g})",
                reference=name,
                reference_epsilon=ref,
                tolerance=slack,
            )
        return ClaimResult(
            holds=False,
            reason=f"claimed ε = {claimed:g} < {label} ε = {ref:.6g} at δ = {delta:g} "
            f"by {ref - claimed:.3g} (tolerance {slack:.2g})",
            reference=name,
            reference_epsilon=ref,
            tolerance=slack,
        )

    rdp = report.rdp.epsilon
    if rdp is not None:
        if claimed >= rdp:
            return ClaimResult(
                holds=True,
                reason=f"claimed ε = {claimed:g} ≥ the RDP upper bound {rdp:.6g} at δ = {delta:g}",
                reference="rdp",
                reference_epsilon=float(rdp),
            )
        return ClaimResult(
            holds=False,
            reason=(
                f"claimed ε = {claimed:g} is below the RDP upper bound {rdp:.6g} at δ = {delta:g} "
                "and no tight accountant supports this run, so it cannot be confirmed"
            ),
            reference="rdp",
            reference_epsilon=float(rdp),
            verifiable=False,
        )

    lower = report.lower_bound
    if lower is not None and claimed < lower:
        return ClaimResult(
            holds=False,
            reason=(
                f"claimed ε = {claimed:g} is below a valid lower bound ε ≥ {lower:.4g} at "
                f"δ = {delta:g} for sampler {report.sampler!r}: the claim is false"
            ),
            reference="shuffle_lower_bound",
            reference_epsilon=float(lower),
        )
    why = report.pld.reason or "no accountant bounds ε for this run"
    return ClaimResult(
        holds=False,
        reason=f"cannot verify claimed ε = {claimed:g}: {why}",
        reference="none" if lower is None else "shuffle_lower_bound",
        reference_epsilon=math.nan if lower is None else float(lower),
        verifiable=False,
    )
