"""Privacy check: ε recomputed from the executed steps, compared with the claim.

ε is recomputed at the claimed δ with RDP, PLD and PRV
(:func:`dpverify.accounting.compute_epsilon`) over the segments of *executed*
steps (:func:`dpverify.accounting.segments_from_ledger`), so steps repeated
after a resume count twice — as they were executed twice.  The claim holds when
:func:`dpverify.accounting.check_claim` says so (claimed ε ≥ the tight estimate,
PLD or PRV's upper bound, within its tolerance).

The claim audited is the seal's (``Seal.claimed_epsilon`` at ``Seal.delta``)
when the run was sealed with one, else the header's.

Samplers without a valid ε upper bound (shuffled fixed-size batches,
balls-in-bins, shuffle cut into Binomial chunks) are refuted: the Poisson ε
does not apply to them, and the known lower bound for shuffling is shown so
the gap is visible (Chua et al., "How Private are DP-SGD Implementations?",
ICML 2024).
"""

from __future__ import annotations

from typing import Any

from audits.check import CheckResult
from dpverify.accounting import NO_UPPER_BOUND_SAMPLERS

__all__ = ["check_privacy", "claimed_privacy"]

_NAME = "privacy"


def claimed_privacy(ledger: Any) -> tuple[float | None, float]:
    """The audited claim ``(claimed_epsilon, delta)``: the seal's if present, else the header's."""
    header, seal = ledger.header, ledger.seal
    epsilon = header.claimed_epsilon
    delta = header.delta
    if seal is not None:
        if seal.claimed_epsilon is not None:
            epsilon = seal.claimed_epsilon
        if seal.delta is not None:
            delta = seal.delta
    return epsilon, delta


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def check_privacy(ledger: Any) -> tuple[CheckResult, Any | None]:
    """Recompute ε for the executed steps and judge the claim.

    Args:
        ledger: a read :class:`dpverify.ledger.Ledger`.

    Returns:
        ``(result, epsilon_report)``; ``epsilon_report`` is the
        :class:`dpverify.accounting.EpsilonReport` (``None`` when nothing could
        be computed).  ``result`` is ``fail`` when the claim is below the
        recomputed ε, when no accountant can bound ε for the declared sampler
        and relation, or for a shuffling sampler; ``skip`` when the run claims
        no ε (the recomputed ε is still reported); else ``pass``.
    """
    from dpverify import accounting

    header = ledger.header
    claimed, delta = claimed_privacy(ledger)
    segments = accounting.segments_from_ledger(ledger)
    executed = sum(seg.steps for seg in segments)
    logical = len({s.step for s in ledger.steps})
    repeated = executed - logical
    # the declared sampler, its parameters plus N, and the neighbouring relation
    report = accounting.compute_epsilon(segments, delta, **accounting.accounting_kwargs(header))
    eps = {name: getattr(report, name).epsilon for name in ("rdp", "pld", "prv")}
    details: dict[str, Any] = {
        "claimed_epsilon": claimed,
        "delta": delta,
        "executed_steps": executed,
        "logical_steps": logical,
        "repeated_steps": repeated,
        "segments": len(segments),
        "neighbouring": header.neighbouring,
        "sampler": header.sampler,
        "epsilon": eps,
    }
    steps_txt = f"{executed} executed steps" + (
        f" ({repeated} repeated after resumes)" if repeated else ""
    )
    eps_txt = f"RDP {_fmt(eps['rdp'])}, PLD {_fmt(eps['pld'])}, PRV upper {_fmt(eps['prv'])}"
    if header.sampler in NO_UPPER_BOUND_SAMPLERS:
        # The accounting layer computes the shuffle lower bound only where the
        # construction is valid (plain shuffling, one (q, σ)), with the run's
        # real epoch length; other shuffle-type samplers get no number.
        lower = report.lower_bound
        as_poisson = accounting.compute_epsilon(
            segments, delta, neighbouring=header.neighbouring, sampler="poisson"
        )
        poisson = as_poisson.tight
        details.update(shuffle_lower_bound=lower, poisson_epsilon=poisson)
        bound_txt = (
            f"shuffled DP-SGD has ε ≥ {_fmt(lower)} at δ = {delta:g} (Chua et al. 2024)"
            if lower is not None
            else "no lower bound is computed for this sampler"
        )
        return (
            CheckResult(
                name=_NAME,
                status="fail",
                reason=(
                    f"sampler {header.sampler!r} (shuffling) has no valid ε upper bound: the "
                    f"Poisson ε {_fmt(poisson)} does not apply; {bound_txt}"
                ),
                details=details,
            ),
            report,
        )
    if all(v is None for v in eps.values()):
        reasons = "; ".join(
            f"{name}: {getattr(report, name).reason}"
            for name in ("rdp", "pld", "prv")
            if getattr(report, name).reason
        )
        return (
            CheckResult(
                name=_NAME,
                status="fail",
                reason=(
                    f"no accountant bounds ε for sampler {header.sampler!r} under "
                    f"{header.neighbouring} neighbouring ({reasons or 'no reason given'})"
                ),
                details=details,
            ),
            report,
        )
    if claimed is None:
        return (
            CheckResult(
                name=_NAME,
                status="skip",
                reason=f"the run claims no ε; recomputed at δ = {delta:g}: {eps_txt} ({steps_txt})",
                details=details,
            ),
            report,
        )
    claim = accounting.check_claim(report, claimed)
    details.update(reference=claim.reference, reference_epsilon=claim.reference_epsilon)
    if claim.holds:
        reason = f"claimed ε = {claimed:g} at δ = {delta:g} holds: {eps_txt} over {steps_txt}"
        return CheckResult(name=_NAME, status="pass", reason=reason, details=details), report
    reason = (
        f"claimed ε = {claimed:g} is below the recomputed {claim.reference} "
        f"ε = {claim.reference_epsilon:.4g} at δ = {delta:g} over {steps_txt}: {claim.reason}"
    )
    if repeated and _holds_without_repeats(ledger, claimed, delta, claim.reference):
        details["holds_for_logical_steps_only"] = True
        reason += (
            f"; the claim would hold for the {logical} logical steps alone: the {repeated} "
            "steps repeated after resumes were not counted in it"
        )
    return CheckResult(name=_NAME, status="fail", reason=reason, details=details), report


def _holds_without_repeats(ledger: Any, claimed: float, delta: float, reference: str) -> bool:
    """Whether the claim holds when each logical step is counted once (a restart not counted)."""
    import types

    from audits.sampling import last_executions
    from dpverify import accounting

    if reference not in ("rdp", "pld", "prv"):
        return False
    once = types.SimpleNamespace(header=ledger.header, steps=last_executions(ledger.steps))
    report = accounting.compute_epsilon(
        accounting.segments_from_ledger(once),
        delta,
        accountants=(reference,),
        **accounting.accounting_kwargs(ledger.header),
    )
    return accounting.check_claim(report, claimed).holds
