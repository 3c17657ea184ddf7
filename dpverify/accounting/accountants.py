"""ε(δ) and δ(ε) for executed segments with RDP, PLD and PRV, side by side.

The events are dp-accounting's (``dp_event``): a Poisson-subsampled Gaussian
step is ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))``; T such steps are
``SelfComposedDpEvent(…, T)``; a run whose (q, σ) changed is a
``ComposedDpEvent`` of self-composed groups (composition is commutative, so
equal (q, σ) are grouped wherever they occur).  The accountants:

* **RDP** (``dp_accounting.rdp.RdpAccountant``): an upper bound, loose by a
  few percent; the conversion to (ε, δ) is Proposition 12 of Canonne, Kamath &
  Steinke 2020 (arXiv:2004.00010).  When the optimal order lies at the edge of
  the order grid the result says so (a wider grid could give a smaller ε).
* **PLD** (``dp_accounting.pld.PLDAccountant``, pessimistic discretisation):
  tight up to the discretisation interval (Koskela et al. 2020; Doroshenko et
  al. 2022, arXiv:2207.04380).  The default interval 1e-4 reproduces the
  public reference values (``tests/accounting/reference_epsilon.json``).
* **PRV** (``prv_accountant``): lower / estimate / upper with the stated
  ``eps_error`` and ``delta_error`` (Gopi, Lee & Wutschitz 2021,
  arXiv:2106.02848); ``epsilon`` is the upper bound.  prv-accountant raises for
  some large-ε settings ("Discrete mean differs…"): that is reported as
  unavailable with the library's message, never raised.

See :mod:`dpverify.accounting.support` for which accountant supports which
sampler under which neighbouring relation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dpverify._validate import check_choice, check_int, check_positive, check_probability
from dpverify.accounting.report import AccountantResult, DeltaReport, EpsilonReport
from dpverify.accounting.segments import Segment
from dpverify.accounting.support import (
    ACCOUNTANTS,
    NEIGHBOURING_RELATIONS,
    NO_UPPER_BOUND_SAMPLERS,
    accounting_kind,
    sampler_sizes,
    unsupported_reason,
)
from dpverify.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_GROUPS",
    "DEFAULT_PLD_DISCRETIZATION",
    "DEFAULT_PRV_EPS_ERROR",
    "MAX_TIGHT_EPSILON",
    "MIN_TIGHT_NOISE_MULTIPLIER",
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


def group_segments(segments: Iterable[Segment]) -> list[tuple[tuple[float, float], int]]:
    """``[((q, σ), total steps), ...]`` in first-seen order: equal (q, σ) grouped run-wide."""
    groups: dict[tuple[float, float], int] = {}
    for seg in segments:
        if not isinstance(seg, Segment):
            raise InvalidArgument(f"segments must be Segment objects, got {type(seg).__name__}")
        groups[seg.key] = groups.get(seg.key, 0) + seg.steps
    return list(groups.items())


def build_event(
    segments: Iterable[Segment],
    *,
    sampler: str = "poisson",
    sampler_params: Mapping[str, Any] | None = None,
):  # -> dp_accounting.DpEvent
    """The dp-accounting event of the executed segments.

    Args:
        segments: executed segments.
        sampler: ``"poisson"``, ``"truncated_poisson"`` (needs ``cap`` and
            ``dataset_size`` in ``sampler_params``) or ``"fixed_size"`` (needs
            ``dataset_size``; ``batch_size`` defaults to round(qN)).
        sampler_params: see ``sampler``.

    Returns:
        ``SelfComposedDpEvent`` for one (q, σ) group, else a ``ComposedDpEvent``
        of them.

    Raises:
        InvalidArgument: no segments, a sampler without an event, or missing sizes.
    """
    return event_from_groups(
        group_segments(segments), sampler=sampler, sampler_params=sampler_params
    )


def event_from_groups(
    groups: Sequence[tuple[tuple[float, float], int]],
    *,
    sampler: str = "poisson",
    sampler_params: Mapping[str, Any] | None = None,
):  # -> dp_accounting.DpEvent
    """The dp-accounting event of ``[((q, σ), steps), ...]`` groups (see :func:`build_event`)."""
    import dp_accounting as dpa

    if not groups:
        raise InvalidArgument("segments must contain at least one step")
    kind = accounting_kind(sampler)
    if kind not in ("poisson", "truncated_poisson", "fixed_size"):
        raise InvalidArgument(f"sampler={sampler!r} has no dp-accounting event")
    qs = {q for (q, _), _ in groups}
    params = dict(sampler_params or {})
    if kind == "fixed_size" and len(qs) > 1:
        params.pop("batch_size", None)  # derive each segment's size from its own q
        params.pop("sample_size", None)
    parts = []
    for (q, sigma), count in groups:
        if kind == "poisson":
            ev = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma))
        elif kind == "truncated_poisson":
            sizes = sampler_sizes(sampler, q, params)
            ev = dpa.TruncatedSubsampledGaussianDpEvent(
                dataset_size=sizes["dataset_size"],
                sampling_probability=q,
                truncated_batch_size=sizes["cap"],
                noise_multiplier=sigma,
            )
        else:
            sizes = sampler_sizes(sampler, q, params)
            ev = dpa.SampledWithoutReplacementDpEvent(
                sizes["dataset_size"], sizes["batch_size"], dpa.GaussianDpEvent(sigma)
            )
        parts.append(dpa.SelfComposedDpEvent(ev, count))
    return parts[0] if len(parts) == 1 else dpa.ComposedDpEvent(parts)


#: Above this many distinct (q, σ) pairs, PLD and PRV use pessimistically rounded groups.
DEFAULT_MAX_GROUPS = 32

#: PLD and PRV are not run when some step has σ below this: their grids grow like 1/σ²
#: (PLD takes ~40 s at σ = 0.1 and does not finish in minutes at σ = 0.02), and ε is
#: so large there (hundreds at typical q and T) that RDP's upper bound says enough.
MIN_TIGHT_NOISE_MULTIPLIER = 0.1


#: PLD and PRV are not run when RDP (requested alongside, as by default) bounds ε above
#: this (Poisson): their grids grow with the composed privacy loss (PLD: ~8 s at ε ≈ 10³
#: over 10⁷ steps; minutes at 10⁹ steps).
MAX_TIGHT_EPSILON = 1e3


def _tight_too_costly(name: str, sigma: float) -> str:
    return (
        f"{name.upper()} not run: noise_multiplier {sigma:g} < {MIN_TIGHT_NOISE_MULTIPLIER:g} "
        "makes its grid impractically large (ε is very large there; see RDP)"
    )


def pessimistic_groups(
    groups: Sequence[tuple[tuple[float, float], int]], max_groups: int
) -> tuple[list[tuple[tuple[float, float], int]], float]:
    """Merge (q, σ) groups onto a log grid, rounding q up and σ down, until <= ``max_groups``.

    The Poisson-subsampled Gaussian's privacy profile increases with q and
    decreases with σ (more sampling or less noise can only cost privacy), so
    accounting the rounded groups gives an upper bound on the run's ε.  PLD and
    PRV cost about a second per distinct group (RDP ~50 ms); this keeps a run
    whose σ or q changed at every step tractable.

    Returns:
        ``(groups, ratio)``: the merged groups and the relative grid step used
        (0.0 when no rounding was needed).
    """
    if len(groups) <= max_groups:
        return list(groups), 0.0
    ratio = 1e-3
    while True:
        step = math.log1p(ratio)
        merged: dict[tuple[float, float], int] = {}
        for (q, sigma), count in groups:
            q_up = min(1.0, math.exp(math.ceil(math.log(q) / step - 1e-9) * step))
            sigma_down = math.exp(math.floor(math.log(sigma) / step + 1e-9) * step)
            key = (q_up, min(sigma, sigma_down))
            merged[key] = merged.get(key, 0) + count
        if len(merged) <= max_groups:
            return list(merged.items()), ratio
        ratio *= 2.0


def _relation(neighbouring: str):
    import dp_accounting as dpa

    return {
        "add_remove": dpa.NeighboringRelation.ADD_OR_REMOVE_ONE,
        "replace_one": dpa.NeighboringRelation.REPLACE_ONE,
    }[neighbouring]


def _timed(name: str, fn, *args: Any, **kwargs: Any) -> AccountantResult:
    start = time.perf_counter()
    try:
        epsilon, reason, details = fn(*args, **kwargs)
    except InvalidArgument:
        raise
    except Exception as exc:  # the libraries raise for some settings: report, never crash
        msg = " ".join(str(exc).split()) or type(exc).__name__
        epsilon, reason, details = None, f"{name.upper()} unavailable: {msg}", {}
    return AccountantResult(
        name=name,
        epsilon=epsilon,
        reason=reason,
        seconds=time.perf_counter() - start,
        details=details,
    )


def _rdp(event, delta: float, neighbouring: str, orders: Sequence[float] | None):
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(
        list(orders) if orders is not None else None, neighboring_relation=_relation(neighbouring)
    )
    acc.compose(event)
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    grid = [float(o) for o in acc.orders]
    details = {"order": float(order), "orders": (grid[0], grid[-1])}
    reason = None
    if math.isfinite(eps) and eps > 0 and float(order) in (grid[0], grid[-1]):
        reason = (
            f"optimal RDP order {float(order):g} is at the edge of the order grid "
            f"[{grid[0]:g}, {grid[-1]:g}]: a wider grid may give a smaller ε"
        )
        details["warning"] = reason
    return float(eps), reason, details


def _pld(event, delta: float, neighbouring: str, discretization: float):
    from dp_accounting import pld

    acc = pld.PLDAccountant(
        neighboring_relation=_relation(neighbouring),
        value_discretization_interval=discretization,
    )
    acc.compose(event)
    eps = float(acc.get_epsilon(delta))
    reason = None
    if math.isinf(eps):
        reason = (
            f"PLD gives ε = inf at δ = {delta:g}: δ is below the probability mass its "
            "discretisation resolves (every step has noise); use a larger δ"
        )
    return eps, reason, {"value_discretization_interval": discretization}


def _prv(groups, delta: float, eps_error: float, delta_error: float):
    from dpverify.accounting._prv import prv_epsilon_bounds, prv_mechanism

    prvs = [prv_mechanism(q, sigma) for (q, sigma), _ in groups]
    counts = [count for _, count in groups]
    lower, estimate, upper = prv_epsilon_bounds(
        prvs, counts, delta, eps_error=eps_error, delta_error=delta_error
    )
    if not math.isfinite(upper):
        return None, "PRV unavailable: δ is below the probability mass at infinity", {}
    details = {
        "lower": max(0.0, lower),
        "estimate": max(0.0, estimate),
        "upper": max(0.0, upper),
        "eps_error": eps_error,
        "delta_error": delta_error,
    }
    return details["upper"], None, details


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
            uses ``batch_size`` and ``dataset_size`` for its epoch length).
        rdp_orders: RDP order grid (default: dp-accounting's);
            :data:`TF_PRIVACY_ORDERS` reproduces tensorflow_privacy.
        pld_discretization: PLD value discretisation interval.
        prv_eps_error: PRV ε error.
        prv_delta_error: PRV δ error (default δ/1000).
        max_groups: above this many distinct (q, σ) pairs (Poisson sampling),
            every accountant uses pessimistically rounded groups (see
            :func:`pessimistic_groups`; ``details["grouping"]`` says so): the
            result stays an upper bound and the cost stays bounded.

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
    common = {"delta": delta, "steps": steps, "sampler": sampler, "neighbouring": neighbouring}

    if not segs:
        res = {
            a: _fixed(a, 0.0, "no steps were executed: nothing was released") for a in ACCOUNTANTS
        }
        return EpsilonReport(**res, **common)
    if any(s.noise_multiplier == 0 for s in segs):
        why = "a step had noise_multiplier = 0: no privacy guarantee (ε is infinite)"
        res = {a: _fixed(a, math.inf, why) for a in ACCOUNTANTS}
        return EpsilonReport(**res, **common)

    if accounting_kind(sampler) in NO_UPPER_BOUND_SAMPLERS:
        return _no_upper_bound_report(
            segs, delta, sampler, sampler_params, common, pld_discretization
        )

    groups = group_segments(segs)
    rounded, ratio = groups, 0.0
    if accounting_kind(sampler) == "poisson":
        rounded, ratio = pessimistic_groups(groups, check_int("max_groups", max_groups, minimum=1))
    grouping = None
    if ratio:
        grouping = (
            f"{len(groups)} distinct (q, σ) pairs rounded pessimistically (q up, σ down, "
            f"relative grid {ratio:g}) to {len(rounded)} groups"
        )
    rounded_event = None
    rdp_bound: float | None = None
    min_sigma = min(sigma for (_, sigma), _ in rounded)
    results: dict[str, AccountantResult] = {}
    for name in ACCOUNTANTS:
        if name not in wanted:
            results[name] = _fixed(name, None, "not requested")
            continue
        why = unsupported_reason(name, sampler, neighbouring)
        if why is None and name != "rdp" and min_sigma < MIN_TIGHT_NOISE_MULTIPLIER:
            why = _tight_too_costly(name, min_sigma)
        if why is None and name != "rdp" and accounting_kind(sampler) == "poisson":
            if rdp_bound is None:
                rdp_bound = _rdp_bound(results.get("rdp"))
            if rdp_bound > MAX_TIGHT_EPSILON:
                why = (
                    f"{name.upper()} not run: RDP bounds ε by {rdp_bound:.4g} > "
                    f"{MAX_TIGHT_EPSILON:g}, where its grid gets impractically large "
                    "(no meaningful privacy either way)"
                )
        if why is not None:
            results[name] = _fixed(name, None, why)
            continue
        if rounded_event is None and name in ("rdp", "pld"):
            try:
                rounded_event = event_from_groups(
                    rounded, sampler=sampler, sampler_params=sampler_params
                )
            except InvalidArgument as exc:  # e.g. a header without the sampler's sizes
                results[name] = _fixed(name, None, f"{name.upper()} unavailable: {exc}")
                continue
        if name == "rdp":
            res = _timed(name, _rdp, rounded_event, delta, neighbouring, rdp_orders)
        elif name == "pld":
            res = _timed(name, _pld, rounded_event, delta, neighbouring, pld_discretization)
        else:
            res = _timed(name, _prv, rounded, delta, prv_eps_error, prv_delta_error)
        if grouping and res.epsilon is not None:
            res = dataclasses.replace(res, details={**res.details, "grouping": grouping})
        results[name] = res
    return EpsilonReport(**results, **common)


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
    if sampler == "shuffle" and len(groups) == 1:
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
    elif sampler == "shuffle":
        notes.append("no shuffle lower bound for runs whose (q, σ) changed")
    try:
        if min(sigma for (_, sigma), _ in groups) < MIN_TIGHT_NOISE_MULTIPLIER:
            raise ValueError("σ too small for a PLD note")
        event = event_from_groups(pessimistic_groups(groups, DEFAULT_MAX_GROUPS)[0])
        as_poisson = _pld(event, delta, common["neighbouring"], pld_discretization)[0]
        notes.append(
            f"the Poisson-subsampling ε (PLD) would be {as_poisson:.4g}; it does not apply "
            f"to sampler {sampler!r}"
        )
    except Exception:  # the note is informative only
        pass
    return EpsilonReport(**results, **common, lower_bound=lower, notes=tuple(notes))


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
) -> DeltaReport:
    """δ at ``epsilon`` for the executed segments, from each requested accountant.

    PRV reports its upper bound on δ (details hold lower/estimate/upper).
    Arguments are as for :func:`compute_epsilon`; ``epsilon`` must be >= 0.
    """
    segs, wanted = _check_common(segments, accountants, neighbouring, sampler)
    epsilon = check_positive("epsilon", epsilon, allow_zero=True)
    deltas: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    if not segs:
        return DeltaReport(epsilon=epsilon, deltas=dict.fromkeys(ACCOUNTANTS, 0.0))
    if any(s.noise_multiplier == 0 for s in segs):
        why = "a step had noise_multiplier = 0: δ(ε) = 1"
        return DeltaReport(
            epsilon=epsilon,
            deltas=dict.fromkeys(ACCOUNTANTS, 1.0),
            reasons=dict.fromkeys(ACCOUNTANTS, why),
        )
    event = None
    for name in ACCOUNTANTS:
        why = (
            "not requested"
            if name not in wanted
            else unsupported_reason(name, sampler, neighbouring)
        )
        min_sigma = min(s.noise_multiplier for s in segs)
        if why is None and name != "rdp" and min_sigma < MIN_TIGHT_NOISE_MULTIPLIER:
            why = _tight_too_costly(name, min_sigma)
        if why is not None:
            deltas[name], reasons[name] = None, why
            continue
        try:
            if name == "prv":
                from dpverify.accounting._prv import prv_delta_bounds, prv_mechanism

                groups = group_segments(segs)
                lo, est, up = prv_delta_bounds(
                    [prv_mechanism(q, s) for (q, s), _ in groups],
                    [c for _, c in groups],
                    epsilon,
                    eps_error=prv_eps_error,
                    delta_error=prv_delta_error,
                )
                deltas[name] = min(1.0, max(0.0, up))
                details[name] = {"lower": max(0.0, lo), "estimate": max(0.0, est), "upper": up}
                continue
            if event is None:
                event = build_event(segs, sampler=sampler, sampler_params=sampler_params)
            if name == "rdp":
                from dp_accounting import rdp

                acc = rdp.RdpAccountant(
                    list(rdp_orders) if rdp_orders is not None else None,
                    neighboring_relation=_relation(neighbouring),
                )
            else:
                from dp_accounting import pld

                acc = pld.PLDAccountant(
                    neighboring_relation=_relation(neighbouring),
                    value_discretization_interval=pld_discretization,
                )
            acc.compose(event)
            deltas[name] = float(acc.get_delta(epsilon))
        except InvalidArgument:
            raise
        except Exception as exc:
            deltas[name] = None
            reasons[name] = f"{name.upper()} unavailable: {' '.join(str(exc).split())}"
    return DeltaReport(epsilon=epsilon, deltas=deltas, reasons=reasons, details=details)
