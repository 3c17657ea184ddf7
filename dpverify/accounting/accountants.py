"""ε(δ) and δ(ε) for executed segments with RDP, PLD and PRV, side by side.

This module decides *which* accountant runs on *which* groups; the events are
built in :mod:`dpverify.accounting.events`, the groups (and the bracketing of
schedules with many distinct (q, σ) pairs) in
:mod:`dpverify.accounting.grouping`, and the accountants themselves run in
:mod:`dpverify.accounting._engines`.  :func:`compute_epsilon` and
:func:`compute_delta` share all three, so both apply the same grouping and
the same limits on when the tight accountants run.

Heterogeneous schedules (σ decay, q warm-up): PLD composes up to
``max_groups`` (default :data:`DEFAULT_MAX_GROUPS` = 1 000) distinct (q, σ)
pairs one by one — dp-accounting's own connect-the-dots PLD of every pair,
built with a vectorised hockey-stick evaluation
(:mod:`dpverify.accounting._fastpld`) on a grid of
:data:`HETEROGENEOUS_PLD_DISCRETIZATION` when there are more than
:data:`ROUNDED_GROUPS` pairs — so its ε is the exact per-step composition's
pessimistic estimate.  RDP and PRV cost about one pass per pair, so beyond
:data:`ROUNDED_GROUPS` pairs they run on a bracket
(:func:`dpverify.accounting.grouping.bracket_groups`): groups rounded to
dominate the run (q up, σ down), which keeps each ε a valid upper bound, and
for PRV also groups the run dominates (q down, σ up), whose *lower* bound is
a valid lower bound.  Beyond ``max_groups`` pairs PLD too runs on dominating
groups (``max_groups`` of them).  The reason states every rounding.

See :mod:`dpverify.accounting.support` for which accountant supports which
sampler under which neighbouring relation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dpverify._validate import check_choice, check_int, check_positive, check_probability
from dpverify.accounting import _engines
from dpverify.accounting.events import build_event, event_from_groups, groups_for_sampler
from dpverify.accounting.grouping import Groups, bracket_groups, group_segments
from dpverify.accounting.report import AccountantResult, DeltaReport, EpsilonReport
from dpverify.accounting.segments import Segment
from dpverify.accounting.support import (
    ACCOUNTANTS,
    NEIGHBOURING_RELATIONS,
    NO_UPPER_BOUND_SAMPLERS,
    accounting_kind,
    unsupported_reason,
)
from dpverify.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_GROUPS",
    "DEFAULT_PLD_DISCRETIZATION",
    "DEFAULT_PRV_EPS_ERROR",
    "HETEROGENEOUS_GRID_ALLOWANCE",
    "HETEROGENEOUS_PLD_DISCRETIZATION",
    "MAX_TIGHT_EPSILON",
    "MIN_TIGHT_NOISE_MULTIPLIER",
    "ROUNDED_GROUPS",
    "TF_PRIVACY_ORDERS",
    "build_event",
    "compute_delta",
    "compute_epsilon",
    "event_from_groups",
    "group_segments",
    "pessimistic_groups",
]

#: PLD value discretisation interval: reproduces every public reference case.
DEFAULT_PLD_DISCRETIZATION = 1e-4
#: PRV ε error (the reference cases use 0.01); δ error defaults to δ/1000.
DEFAULT_PRV_EPS_ERROR = 0.01
#: The RDP order grid of tensorflow_privacy's ``compute_dp_sgd_privacy``.
TF_PRIVACY_ORDERS: tuple[float, ...] = (
    *(1 + x / 4.0 for x in range(1, 15)),
    *range(5, 64),
    128,
    256,
    512,
)

#: PLD composes up to this many distinct (q, σ) pairs one by one; beyond, it runs on
#: this many groups rounded to dominate the run.  ~10–40 ms of CPU per pair (h = 1e-3).
DEFAULT_MAX_GROUPS = 1000

#: RDP and PRV compose up to this many distinct pairs exactly (PRV ~0.4 s per pair);
#: beyond, they run on this many rounded groups (a bracket).
ROUNDED_GROUPS = 32

#: PLD's grid when it composes more than :data:`ROUNDED_GROUPS` distinct pairs one by one
#: (the configured one, 1e-4, costs ~7× more there).  Still dp-accounting's pessimistic
#: estimate; measured 0.03 % above the 1e-4 grid on 1 000 distinct σ (docs/accounting.md).
HETEROGENEOUS_PLD_DISCRETIZATION = 1e-3

#: Relative allowance for that coarser grid: a claim is refuted on it only when below its
#: ε by more than this fraction (plus the claims tolerance); in between it is unverifiable.
#: Scaled by grid / 1e-3 for a coarser configured grid; none on the configured grid.
HETEROGENEOUS_GRID_ALLOWANCE = 5e-3

#: The coarse grid is used only when no pair is composed more than this many times.
MAX_COARSE_GRID_COUNT = 1000


def _grid_allowance(h: float | None, configured: float) -> float:
    if h is None or h <= configured:
        return 0.0
    return HETEROGENEOUS_GRID_ALLOWANCE * h / HETEROGENEOUS_PLD_DISCRETIZATION

#: PLD and PRV are not run when some step has σ below this: their grids grow like 1/σ²
#: (PLD takes ~40 s at σ = 0.1 and does not finish in minutes at σ = 0.02), and ε is
#: so large there (hundreds at typical q and T) that RDP's upper bound says enough.
MIN_TIGHT_NOISE_MULTIPLIER = 0.1

#: PLD and PRV are not run when RDP (requested alongside, as by default) bounds ε above
#: this (Poisson): their grids grow with the composed privacy loss (PLD: ~8 s at ε ≈ 10³
#: over 10⁷ steps; minutes at 10⁹ steps).
MAX_TIGHT_EPSILON = 1e3


def pessimistic_groups(groups: Sequence[tuple[tuple[float, float], int]], max_groups: int) -> tuple[
    Groups, bool
]:
    """At most ``max_groups`` groups that dominate ``groups`` (q up, σ down), and whether rounded.

    See :func:`dpverify.accounting.grouping.bracket_groups`.
    """
    upper, _ = bracket_groups(groups, max_groups)
    return upper, len(upper) < len(groups)


def _tight_too_costly(name: str, sigma: float) -> str:
    return (
        f"{name.upper()} not run: noise_multiplier {sigma:g} < {MIN_TIGHT_NOISE_MULTIPLIER:g} "
        "makes its grid impractically large (ε is very large there; see RDP)"
    )


def _check_common(
    segments: Iterable[Segment] | Segment,
    accountants: Sequence[str] | str,
    neighbouring: str,
    sampler: str,
) -> tuple[list[Segment], tuple[str, ...]]:
    if isinstance(segments, Segment):
        segments = [segments]
    segs = list(segments)
    for seg in segs:
        if not isinstance(seg, Segment):
            raise InvalidArgument(f"segments must be Segment objects, got {type(seg).__name__}")
    if isinstance(accountants, str):
        accountants = ACCOUNTANTS if accountants == "all" else (accountants,)
    wanted = tuple(check_choice("accountant", a, (*ACCOUNTANTS,)) for a in accountants)
    check_choice("neighbouring", neighbouring, NEIGHBOURING_RELATIONS)
    if not isinstance(sampler, str) or not sampler:
        raise InvalidArgument(f"sampler={sampler!r} must be a non-empty string")
    return segs, wanted


def _fixed(name: str, epsilon: float | None, reason: str) -> AccountantResult:
    return AccountantResult(name=name, epsilon=epsilon, reason=reason)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The groups each accountant composes, and what the rounding (if any) was.

    ``upper``/``lower``: RDP's and PRV's groups (rounded up / down beyond
    :data:`ROUNDED_GROUPS` pairs); ``pld``: PLD's groups (every pair when
    ``pld_exact``), composed by :mod:`._fastpld` on a grid of ``pld_h`` when
    ``pld_fast``, else by ``PLDAccountant`` on the event of ``upper``.
    """

    exact: Groups
    upper: Groups
    lower: Groups
    rounding: str | None
    pld: Groups
    pld_exact: bool = True
    pld_fast: bool = False
    pld_h: float | None = None


def _plan(
    segs: list[Segment],
    sampler: str,
    sampler_params: Mapping[str, Any] | None,
    max_groups: int,
    neighbouring: str = "add_remove",
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> _Plan:
    exact = groups_for_sampler(segs, sampler, sampler_params)
    max_groups = check_int("max_groups", max_groups, minimum=1)
    if accounting_kind(sampler) not in ("poisson", "cyclic_poisson"):
        return _Plan(exact, exact, exact, None, exact)
    upper, lower = bracket_groups(exact, min(max_groups, ROUNDED_GROUPS))
    n = len(exact)
    if n <= len(upper):
        return _Plan(exact, upper, lower, None, exact)
    if neighbouring != "add_remove":  # the fast PLD covers add/remove only
        rounding = (
            f"{n} distinct (q, σ) pairs bracketed by {len(upper)} groups: RDP, PLD "
            f"and PRV's upper bound use q rounded up and σ down (valid upper bounds), PRV's "
            f"lower bound uses q rounded down and σ up"
        )
        return _Plan(exact, upper, lower, rounding, upper, pld_exact=False)
    # The coarse grid only where each pair is composed few times: its pessimism grows with
    # the self-composition count (0.47 % at 10⁵ steps of one pair, 0.03 % for 1 000 pairs).
    coarse = max(count for _, count in exact) <= MAX_COARSE_GRID_COUNT
    h = max(pld_discretization, HETEROGENEOUS_PLD_DISCRETIZATION) if coarse else pld_discretization
    rdp_prv = (
        "q rounded up and σ down for RDP and PRV's upper bound (valid upper bounds), "
        "q rounded down and σ up for PRV's lower bound"
    )
    if n <= max_groups:
        rounding = (
            f"{n} distinct (q, σ) pairs: PLD composed every pair exactly (dp-accounting "
            f"connect-the-dots, grid {h:g}); RDP and PRV bracketed by {len(upper)} groups, "
            f"{rdp_prv}"
        )
        return _Plan(exact, upper, lower, rounding, exact, pld_fast=True, pld_h=h)
    pld_groups, _ = bracket_groups(exact, max_groups)
    pld_txt = (
        f"PLD on {len(pld_groups)} groups with q rounded up and σ down (a valid upper bound, "
        f"grid {h:g}; --max-groups to compose more pairs exactly)"
    )
    rounding = f"{n} distinct (q, σ) pairs bracketed by {len(upper)} groups: {rdp_prv}; {pld_txt}"
    return _Plan(
        exact, upper, lower, rounding, pld_groups, pld_exact=False, pld_fast=True, pld_h=h
    )


def _skip_reason(
    name: str,
    wanted: tuple[str, ...],
    sampler: str,
    neighbouring: str,
    plan: _Plan,
    rdp_bound: float,
) -> str | None:
    if name not in wanted:
        return "not requested"
    why = unsupported_reason(name, sampler, neighbouring)
    if why is not None or name == "rdp":
        return why
    min_sigma = min(sigma for (_, sigma), _ in plan.exact)
    if min_sigma < MIN_TIGHT_NOISE_MULTIPLIER:
        return _tight_too_costly(name, min_sigma)
    if accounting_kind(sampler) in ("poisson", "cyclic_poisson") and rdp_bound > MAX_TIGHT_EPSILON:
        return (
            f"{name.upper()} not run: RDP bounds ε by {rdp_bound:.4g} > "
            f"{MAX_TIGHT_EPSILON:g}, where its grid gets impractically large "
            "(no meaningful privacy either way)"
        )
    return None


def _event(plan_groups: Groups, sampler: str, sampler_params: Mapping[str, Any] | None):
    return event_from_groups(plan_groups, sampler=sampler, sampler_params=sampler_params)


def _prv_bracketed(plan: _Plan, delta: float, eps_error: float, delta_error: float):
    upper, reason, details = _engines.prv_epsilon(plan.upper, delta, eps_error, delta_error)
    if plan.rounding is None or upper is None:
        return upper, reason, details
    low, _, low_details = _engines.prv_epsilon(plan.lower, delta, eps_error, delta_error)
    details = {
        **details,
        "lower": low_details.get("lower", 0.0) if low is not None else 0.0,
        "estimate_range": (low_details.get("estimate"), details["estimate"]),
        "bracketed": True,
    }
    return upper, reason, details


def compute_epsilon(
    segments: Iterable[Segment] | Segment,
    delta: float,
    *,
    accountants: Sequence[str] | str = ACCOUNTANTS,
    neighbouring: str = "add_remove",
    sampler: str = "poisson",
    sampler_params: Mapping[str, Any] | None = None,
    rdp_orders: Sequence[float] | None = None,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
    prv_eps_error: float = DEFAULT_PRV_EPS_ERROR,
    prv_delta_error: float | None = None,
    max_groups: int = DEFAULT_MAX_GROUPS,
    progress: Callable[[str], None] | None = None,
) -> EpsilonReport:
    """ε at ``delta`` for the executed segments, from each requested accountant.

    Args:
        segments: executed segments (every executed step, repeats included).
        delta: δ in (0, 1).
        accountants: names among ``"rdp"``, ``"pld"``, ``"prv"`` (or ``"all"``);
            the others are reported as not requested.
        neighbouring: ``"add_remove"`` (default) or ``"replace_one"``.
        sampler: the run's sampler name (see :mod:`dpverify.accounting.support`).
            For shuffling samplers every accountant is ``None`` with the reason,
            ``lower_bound`` holds :func:`shuffle_lower_bound` (sampler
            ``"shuffle"``, one (q, σ)) and ``notes`` the Poisson ε that does not apply.
        sampler_params: the header's ``sampler_params`` plus ``dataset_size``
            (needed by ``truncated_poisson`` and ``fixed_size``; ``shuffle``
            uses ``batch_size`` and ``dataset_size`` for its epoch length;
            ``cyclic_poisson`` needs ``cycle_length``).
        rdp_orders: RDP order grid (default: dp-accounting's);
            :data:`TF_PRIVACY_ORDERS` reproduces tensorflow_privacy.
        pld_discretization: PLD value discretisation interval.
        prv_eps_error: PRV ε error.
        prv_delta_error: PRV δ error (default δ/1000).
        max_groups: PLD composes up to this many distinct (q, σ) pairs
            (Poisson sampling, add/remove) one by one; beyond, it runs on this
            many groups rounded to dominate the run.  RDP and PRV always use
            at most ``min(max_groups, ROUNDED_GROUPS)`` groups (module
            docstring; ``rounding`` in the report says what was rounded).
        progress: called with an accountant's name before it runs (PLD and
            PRV can take many seconds).

    Returns:
        An :class:`EpsilonReport`.  With no executed steps every ε is 0.  A step
        with σ = 0 makes every ε infinite.  PLD and PRV are not run (``None``
        with the reason) when some σ < :data:`MIN_TIGHT_NOISE_MULTIPLIER`.

    Raises:
        InvalidArgument: bad δ, accountant, relation, sampler sizes or segments.
    """
    segs, wanted = _check_common(segments, accountants, neighbouring, sampler)
    delta = check_probability("delta", delta, allow_one=False)
    pld_discretization = check_positive("pld_discretization", pld_discretization)
    prv_eps_error = check_positive("prv_eps_error", prv_eps_error)
    prv_delta_error = (
        delta / 1000
        if prv_delta_error is None
        else check_probability("prv_delta_error", prv_delta_error, allow_one=False)
    )
    steps = sum(s.steps for s in segs)
    common: dict[str, Any] = {
        "delta": delta,
        "steps": steps,
        "sampler": sampler,
        "neighbouring": neighbouring,
    }

    if not segs:
        zero = {
            a: _fixed(a, 0.0, "no steps were executed: nothing was released") for a in ACCOUNTANTS
        }
        return _make_report(zero, common)
    if any(s.noise_multiplier == 0 for s in segs):
        why = "a step had noise_multiplier = 0: no privacy guarantee (ε is infinite)"
        infinite = {a: _fixed(a, math.inf, why) for a in ACCOUNTANTS}
        return _make_report(infinite, common)

    if accounting_kind(sampler) in NO_UPPER_BOUND_SAMPLERS:
        return _no_upper_bound_report(
            segs, delta, sampler, sampler_params, common, pld_discretization
        )

    try:
        plan = _plan(
            segs, sampler, sampler_params, max_groups, neighbouring, pld_discretization
        )
    except InvalidArgument as exc:  # e.g. cyclic_poisson without its cycle_length
        if "max_groups" in str(exc):
            raise
        failed = {a: _fixed(a, None, f"{a.upper()} unavailable: {exc}") for a in ACCOUNTANTS}
        return _make_report(failed, common)
    event = None
    results: dict[str, AccountantResult] = {}
    for name in ACCOUNTANTS:
        rdp_bound = _rdp_bound(results.get("rdp"))
        skip = _skip_reason(name, wanted, sampler, neighbouring, plan, rdp_bound)
        if skip is not None:
            results[name] = _fixed(name, None, skip)
            continue
        if event is None and (name == "rdp" or (name == "pld" and not plan.pld_fast)):
            try:
                event = _event(plan.upper, sampler, sampler_params)
            except InvalidArgument as exc:  # e.g. a header without the sampler's sizes
                results[name] = _fixed(name, None, f"{name.upper()} unavailable: {exc}")
                continue
        if progress is not None:
            progress(name)
        if name == "rdp":
            res = _engines.timed(name, _engines.rdp_epsilon, event, delta, neighbouring, rdp_orders)
        elif name == "pld" and plan.pld_fast:
            res = _engines.timed(
                name, _engines.pld_epsilon_groups, plan.pld, delta, neighbouring, plan.pld_h
            )
            if res.epsilon is not None:
                res = dataclasses.replace(
                    res,
                    details={
                        **res.details,
                        "pairs_exact": plan.pld_exact,
                        "groups": len(plan.pld),
                        "grid_allowance": _grid_allowance(plan.pld_h, pld_discretization),
                    },
                )
        elif name == "pld":
            res = _engines.timed(
                name, _engines.pld_epsilon, event, delta, neighbouring, pld_discretization
            )
        else:
            res = _engines.timed(
                name, _prv_bracketed, plan, delta, prv_eps_error, prv_delta_error
            )
        if plan.rounding and res.epsilon is not None:
            res = dataclasses.replace(res, details={**res.details, "grouping": plan.rounding})
        results[name] = res
    return _make_report(results, common, rounding=plan.rounding)


def _make_report(
    results: Mapping[str, AccountantResult], common: Mapping[str, Any], **extra: Any
) -> EpsilonReport:
    return EpsilonReport(
        rdp=results["rdp"],
        pld=results["pld"],
        prv=results["prv"],
        delta=common["delta"],
        steps=common["steps"],
        sampler=common["sampler"],
        neighbouring=common["neighbouring"],
        **extra,
    )


def _rdp_bound(rdp_result: AccountantResult | None) -> float:
    """RDP's ε when it was requested and answered (free: computed first), else 0.0."""
    if rdp_result is not None and rdp_result.epsilon is not None:
        return rdp_result.epsilon
    return 0.0


def _no_upper_bound_report(
    segs: list[Segment],
    delta: float,
    sampler: str,
    sampler_params: Mapping[str, Any] | None,
    common: dict[str, Any],
    pld_discretization: float,
) -> EpsilonReport:
    from dpverify.accounting.shuffle import shuffle_lower_bound

    why = unsupported_reason("pld", sampler, common["neighbouring"]) or ""
    results = {a: _fixed(a, None, why) for a in ACCOUNTANTS}
    notes = [why]
    lower = None
    groups = group_segments(segs)
    if accounting_kind(sampler) == "shuffle" and len(groups) == 1:
        (q, sigma), steps = groups[0]
        params = dict(sampler_params or {})
        per_epoch = None
        if params.get("batch_size") and params.get("dataset_size"):
            per_epoch = max(1, int(params["dataset_size"]) // int(params["batch_size"]))
            q = min(1.0, int(params["batch_size"]) / int(params["dataset_size"]))
        lower = shuffle_lower_bound(q, sigma, steps, delta, steps_per_epoch=per_epoch)
        notes.append(
            f"shuffled DP-SGD has ε ≥ {lower:.4g} at δ = {delta:g} "
            "(lower bound after Chua et al., ICML 2024)"
        )
    elif accounting_kind(sampler) == "shuffle":
        notes.append("no shuffle lower bound for runs whose (q, σ) changed")
    if min(sigma for (_, sigma), _ in groups) >= MIN_TIGHT_NOISE_MULTIPLIER:
        upper, _ = bracket_groups(groups, ROUNDED_GROUPS)
        res = _engines.timed(
            "pld",
            _engines.pld_epsilon,
            event_from_groups(upper),
            delta,
            common["neighbouring"],
            pld_discretization,
        )
        if res.epsilon is not None:
            notes.append(
                f"the Poisson-subsampling ε (PLD) would be {res.epsilon:.4g}; it does not "
                f"apply to sampler {sampler!r}"
            )
    return _make_report(results, common, lower_bound=lower, notes=tuple(notes))


def compute_delta(
    segments: Iterable[Segment] | Segment,
    epsilon: float,
    *,
    accountants: Sequence[str] | str = ACCOUNTANTS,
    neighbouring: str = "add_remove",
    sampler: str = "poisson",
    sampler_params: Mapping[str, Any] | None = None,
    rdp_orders: Sequence[float] | None = None,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
    prv_eps_error: float = DEFAULT_PRV_EPS_ERROR,
    prv_delta_error: float = 1e-10,
    max_groups: int = DEFAULT_MAX_GROUPS,
) -> DeltaReport:
    """δ at ``epsilon`` for the executed segments, from each requested accountant.

    The same groups (bracketed beyond ``max_groups``: every δ is then an upper
    bound), the same accountants and the same limits as :func:`compute_epsilon`
    (PLD and PRV skipped for σ < :data:`MIN_TIGHT_NOISE_MULTIPLIER`, or when RDP
    bounds ε at δ = ``prv_delta_error`` above :data:`MAX_TIGHT_EPSILON`).
    PRV reports its upper bound on δ (details hold lower/estimate/upper).
    Arguments are as for :func:`compute_epsilon`; ``epsilon`` must be >= 0.
    """
    segs, wanted = _check_common(segments, accountants, neighbouring, sampler)
    epsilon = check_positive("epsilon", epsilon, allow_zero=True)
    prv_delta_error = check_probability("prv_delta_error", prv_delta_error, allow_one=False)
    if not segs:
        return DeltaReport(epsilon=epsilon, deltas=dict.fromkeys(ACCOUNTANTS, 0.0))
    if any(s.noise_multiplier == 0 for s in segs):
        why = "a step had noise_multiplier = 0: δ(ε) = 1"
        return DeltaReport(
            epsilon=epsilon,
            deltas=dict.fromkeys(ACCOUNTANTS, 1.0),
            reasons=dict.fromkeys(ACCOUNTANTS, why),
        )
    if accounting_kind(sampler) in NO_UPPER_BOUND_SAMPLERS:
        why = unsupported_reason("pld", sampler, neighbouring) or ""
        return DeltaReport(
            epsilon=epsilon,
            deltas=dict.fromkeys(ACCOUNTANTS),
            reasons=dict.fromkeys(ACCOUNTANTS, why),
        )
    plan = _plan(segs, sampler, sampler_params, max_groups, neighbouring, pld_discretization)
    deltas: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    event = None
    rdp_bound = 0.0
    for name in ACCOUNTANTS:
        skip = _skip_reason(name, wanted, sampler, neighbouring, plan, rdp_bound)
        if skip is not None:
            deltas[name], reasons[name] = None, skip
            continue
        if event is None and (name == "rdp" or (name == "pld" and not plan.pld_fast)):
            try:
                event = _event(plan.upper, sampler, sampler_params)
            except InvalidArgument as exc:
                deltas[name], reasons[name] = None, f"{name.upper()} unavailable: {exc}"
                continue
        if name == "rdp":
            res = _engines.timed(name, _engines.rdp_delta, event, epsilon, neighbouring, rdp_orders)
            cap = _engines.timed(
                name, _engines.rdp_epsilon, event, prv_delta_error, neighbouring, rdp_orders
            )
            rdp_bound = cap.epsilon if cap.epsilon is not None else 0.0
        elif name == "pld" and plan.pld_fast:
            res = _engines.timed(
                name, _engines.pld_delta_groups, plan.pld, epsilon, neighbouring, plan.pld_h
            )
        elif name == "pld":
            res = _engines.timed(
                name, _engines.pld_delta, event, epsilon, neighbouring, pld_discretization
            )
        else:
            res = _engines.timed(
                name, _engines.prv_delta, plan.upper, epsilon, prv_eps_error, prv_delta_error
            )
        deltas[name] = res.epsilon  # timed() carries the accountant's number in .epsilon
        if res.reason:
            reasons[name] = res.reason
        if res.details:
            details[name] = dict(res.details)
        if plan.rounding:
            details.setdefault(name, {})["grouping"] = plan.rounding
    return DeltaReport(epsilon=epsilon, deltas=deltas, reasons=reasons, details=details)
