"""Privacy check: ε recomputed from the executed steps, compared with the claim.

ε is recomputed at the claimed δ with RDP, PLD and PRV
(:func:`dpverify.accounting.compute_epsilon`) over the segments of *executed*
steps (:func:`dpverify.accounting.segments_from_ledger`), so steps repeated
after a resume count twice — as they were executed twice.  The claim is judged
by :func:`dpverify.accounting.check_claim`: it holds when it is at least any
valid upper bound (or within the tolerance below the tight estimate), it is
refuted only below what the tight accountants establish with their error
bounds, and in between it is unverifiable.

The claim audited is the seal's (``Seal.claimed_epsilon`` at ``Seal.delta``)
when the run was sealed with one, else the header's.  A claim at δ ≥ 1/N is
not a meaningful guarantee (it permits publishing an example outright): it is
unverifiable, whatever ε it states; a claim at δ = 0 is refuted (the Gaussian
mechanism's privacy loss is unbounded: δ(ε) > 0 at every finite ε).

Per-step sampling rates are used only when the sampling check verified them
(``rates_verified``); otherwise each step is accounted at the larger of its
recorded rate and the header's, so a rate recorded below the truth never
lowers ε.

Samplers without a valid ε upper bound (shuffled fixed-size batches,
balls-in-bins, shuffle cut into Binomial chunks) are unverifiable, not
refuted: the Poisson ε does not apply to them, and the known lower bound for
shuffling is shown so the gap is visible (Chua et al., "How Private are DP-SGD
Implementations?", ICML 2024); a claim below that lower bound is refuted.

A result that can neither confirm nor refute the claim has status ``fail``
with ``details["unverifiable"] = True``: the runner's verdict is then
``unverifiable``, not ``refuted``.
"""

from __future__ import annotations

from typing import Any

from audits.check import CheckResult
from dpverify.accounting.support import NO_UPPER_BOUND_SAMPLERS, accounting_kind

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


def _unverifiable(reason: str, details: dict[str, Any]) -> CheckResult:
    return CheckResult(
        name=_NAME, status="fail", reason=reason, details={**details, "unverifiable": True}
    )


def _accounted_steps(ledger: Any, rates_verified: bool | None) -> tuple[Any, int]:
    """The steps to account, and how many recorded a rate that was not trusted."""
    import types

    header = ledger.header
    q0 = header.sampling_rate
    if rates_verified:
        return ledger.steps, 0
    raised = 0
    steps = []
    for s in ledger.steps:
        rate = s.sampling_rate
        if rate is not None and rate != q0:
            raised += rate < q0
            rate = max(q0, rate)
        steps.append(
            types.SimpleNamespace(step=s.step, sampling_rate=rate, noise_multiplier=s.noise_multiplier)
        )
    return steps, raised


def _verified_options(header: Any, steps: Any) -> dict[str, Any]:
    """The accounting options, with a fixed batch size no smaller than the batches recorded.

    A ``fixed_size`` run is accounted at its batch size B (sampling without
    replacement, replace-one RDP); B comes from what the indices show, not
    only from the declaration: the larger of the declared (or round(q·N)) size
    and the largest recorded batch, so a declared size below the real one
    never lowers ε (the sampling check refutes such a run as well).
    """
    from dpverify import accounting

    options = accounting.accounting_kwargs(header)
    if accounting_kind(header.sampler) == "fixed_size" and steps:
        params = dict(options["sampler_params"])
        declared = params.get("batch_size", params.get("sample_size"))
        if declared is None:
            declared = max(1, round(header.sampling_rate * header.dataset_size))
        largest = max(s.batch_size for s in steps)
        if isinstance(declared, int) and largest > declared:
            params["batch_size"] = min(largest, header.dataset_size)
            params.pop("sample_size", None)
        options["sampler_params"] = params
    return options


def _cyclic_adjacency_note(header: Any) -> str:
    """The adjacency a cyclic Poisson bound really covers ('' for other samplers).

    Cyclic Poisson sampling splits the data set once into b equal groups (a
    random permutation cut into pieces, as jax_privacy's ``EQUAL_SPLIT``
    partition and dpverify's sampler do).  Adding an example re-draws every
    group, so the per-example analysis — b·q within the active group, once
    every b steps — covers neighbours that keep N fixed: zero-out (an example
    replaced by one contributing a zero gradient), whose ε equals the
    add/remove computation, or replace-one.  The certificate says so rather
    than claim add/remove.
    """
    params = header.sampler_params or {}
    if (
        accounting_kind(header.sampler) != "cyclic_poisson"
        or int(params.get("cycle_length", 1)) <= 1
        or header.neighbouring != "add_remove"
    ):
        return ""
    return (
        "neighbours are zero-out (an example replaced by a zero-gradient one; same ε as the "
        "add/remove computation): with groups drawn once as an equal split, adding an example "
        "would redraw every group"
    )


def _per_step_sigma_note(header: Any, steps: Any) -> str:
    """Words for per-step noise multipliers that differ from the header's ('' if none).

    The accountant uses each step's recorded σ.  A recorded σ is a trainer's
    statement like the header's: only replay of the released parameters
    checks the noise actually added, so a schedule that departs from the
    header is stated, with the larger-than-declared part counted.
    """
    sigma0 = header.noise_multiplier
    recorded = [s.noise_multiplier for s in steps if s.noise_multiplier is not None]
    differ = [x for x in recorded if x != sigma0]
    if not differ:
        return ""
    above = sum(1 for x in differ if x > sigma0)
    span = f"{min(differ):g}" if min(differ) == max(differ) else f"{min(differ):g}–{max(differ):g}"
    return (
        f"σ as recorded per step ({span} at {len(differ)} steps, "
        f"{above} above the header's {sigma0:g}); only replay verifies the noise added"
    )


def check_privacy(
    ledger: Any,
    *,
    rates_verified: bool | None = None,
    max_groups: int | None = None,
    epsilon_of: Any = None,
) -> tuple[CheckResult, Any | None]:
    """Recompute ε for the executed steps and judge the claim.

    Args:
        ledger: a read :class:`dpverify.ledger.Ledger`.
        rates_verified: the sampling check's verdict on the recorded per-step
            rates (``details["rates_verified"]``); unless True, no step is
            accounted below the header's rate.
        max_groups: passed to :func:`dpverify.accounting.compute_epsilon`
            (``None``: its default).
        epsilon_of: stands in for ``compute_epsilon`` (same signature and
            result), e.g. :meth:`audits._early_privacy.EarlyPrivacy.compute`.

    Returns:
        ``(result, epsilon_report)``; ``epsilon_report`` is the
        :class:`dpverify.accounting.EpsilonReport` (``None`` when nothing could
        be computed).  ``result`` is ``fail`` when the claim is below what the
        accountants establish; ``fail`` with ``details["unverifiable"]`` when it
        can be neither confirmed nor refuted (δ ≥ 1/N, no accountant bounds ε
        for the sampler and relation, a claim inside the accountants'
        interval); ``skip`` when the run claims no ε (the recomputed ε is still
        reported); else ``pass``.
    """
    import types

    from dpverify import accounting

    header = ledger.header
    claimed, delta = claimed_privacy(ledger)
    if claimed is not None and delta == 0.0:
        # The Gaussian mechanism's privacy loss is unbounded, subsampled or not:
        # δ(ε) > 0 for every finite ε, so no (ε, 0) claim can hold.
        return (
            CheckResult(
                name=_NAME,
                status="fail",
                reason=(
                    f"claimed ε = {claimed:g} at δ = 0 cannot hold: Gaussian noise has an unbounded "
                    "privacy loss, so it gives a finite ε only at some δ > 0"
                ),
                details={"claimed_epsilon": claimed, "delta": 0.0},
            ),
            None,
        )
    steps, raised = _accounted_steps(ledger, rates_verified)
    segments = accounting.segments_from_ledger(types.SimpleNamespace(header=header, steps=steps))
    executed = sum(seg.steps for seg in segments)
    logical = len({s.step for s in ledger.steps})
    repeated = executed - logical
    n = header.dataset_size
    # the declared sampler, its parameters plus N, and the neighbouring relation
    options = _verified_options(header, ledger.steps)
    if max_groups is not None:
        options["max_groups"] = max_groups
    report = (epsilon_of or accounting.compute_epsilon)(segments, delta, **options)
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
        "rates_verified": bool(rates_verified),
        "steps_raised_to_header_rate": raised,
        "rounding": report.rounding,
        "disagreements": list(report.disagreements),
    }
    steps_txt = f"{executed} executed steps" + (
        f" ({repeated} repeated after resumes)" if repeated else ""
    )
    if raised:
        steps_txt += (
            f"; {raised} steps recorded a rate below the header's that the sampling check did "
            "not verify: accounted at the header's rate"
        )
    adjacency_note = _cyclic_adjacency_note(header)
    if adjacency_note:
        steps_txt += f"; {adjacency_note}"
        details["adjacency"] = "zero_out"
    sigma_note = _per_step_sigma_note(header, ledger.steps)
    if sigma_note:
        steps_txt += f"; {sigma_note}"
        details["per_step_sigma"] = sigma_note
    eps_txt = f"RDP {_fmt(eps['rdp'])}, PLD {_fmt(eps['pld'])}, PRV upper {_fmt(eps['prv'])}"
    if report.disagreements:
        eps_txt += f" ({'; '.join(report.disagreements)})"
    if claimed is not None and delta >= 1.0 / n:
        return (
            _unverifiable(
                f"claimed ε = {claimed:g} at δ = {delta:g} is not a meaningful guarantee: "
                f"δ ≥ 1/N = {1.0 / n:.3g} permits publishing an example outright "
                f"(recomputed: {eps_txt})",
                details,
            ),
            report,
        )
    if accounting_kind(header.sampler) in NO_UPPER_BOUND_SAMPLERS:
        # The accounting layer computes the shuffle lower bound only where the
        # construction is valid (plain shuffling, one (q, σ)), with the run's
        # real epoch length; other shuffle-type samplers get no number.
        lower = report.lower_bound
        poisson = accounting.compute_epsilon(
            segments, delta, neighbouring=header.neighbouring, accountants=("pld",)
        ).pld.epsilon
        details.update(shuffle_lower_bound=lower, poisson_epsilon=poisson)
        bound_txt = (
            f"shuffled DP-SGD has ε ≥ {_fmt(lower)} at δ = {delta:g} (Chua et al. 2024)"
            if lower is not None
            else "no lower bound is computed for this sampler"
        )
        head = (
            f"no accountant gives an upper bound for sampler {header.sampler!r} "
            f"(batches are not independently subsampled; the Poisson ε {_fmt(poisson)} does "
            f"not apply); {bound_txt}"
        )
        if claimed is not None and lower is not None and claimed < lower:
            return (
                CheckResult(
                    name=_NAME,
                    status="fail",
                    reason=f"claimed ε = {claimed:g} is below the lower bound: {head}",
                    details=details,
                ),
                report,
            )
        return _unverifiable(head, details), report
    if all(v is None for v in eps.values()):
        reasons = "; ".join(
            f"{name}: {getattr(report, name).reason}"
            for name in ("rdp", "pld", "prv")
            if getattr(report, name).reason
        )
        return (
            _unverifiable(
                f"no accountant bounds ε for sampler {header.sampler!r} under "
                f"{header.neighbouring} neighbouring ({reasons or 'no reason given'})",
                details,
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
        reason = (
            f"claimed ε = {claimed:g} at δ = {delta:g} holds ({claim.reason}): {eps_txt} "
            f"over {steps_txt}"
        )
        return CheckResult(name=_NAME, status="pass", reason=reason, details=details), report
    if not claim.verifiable:
        return _unverifiable(f"{claim.reason}: {eps_txt} over {steps_txt}", details), report
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
