"""The sampling battery: one streaming pass, a null per declared sampler, family-wise control.

Under Poisson sampling at rate q, the T×N inclusion matrix of a run has
i.i.d. Bernoulli(q) entries; the other declared samplers (fixed size, truncated
and cyclic Poisson, :mod:`dpverify.stats._declared`) have their own nulls, and
every test is written for them.  :func:`run_battery` streams the batches once
(memory O(N + T), or O(examples seen) at huge N; see
:mod:`dpverify.stats._stream`) and runs:

======  ============================  ==============================================
 T0     ``batch_size_support``        sizes the declared sampler cannot produce
 T0'    ``group_membership``          cyclic Poisson: an example outside its group
 T1     ``batch_size_dispersion``     fixed batch sizes; groups drawn together
 T2     ``batch_size_fit``            wrong q; reshaped or capped size distribution
 T3     ``inclusion_count_dispersion`` epoch-based shuffling; unequal rates
 T4     ``total_inclusions``          biased q
 T5     ``consecutive_overlap``       shuffling (disjoint consecutive batches)
 T6     ``return_gaps``               epoch structure; periodic reuse
 T7     ``lagged_overlap_scan``       seed / key reused a few steps apart
 T8     ``adjacent_index_pairs``      contiguous blocks sampled for I/O speed
 T9     ``truncation_scan``           undeclared caps; batches above a declared cap
 T10    ``repeated_batches``          seed reused at any distance
======  ============================  ==============================================

The exact tests T0 and T0′ (impossible sizes, examples outside their group)
reject on a certain violation and take no share of α.  ``repeated_batches``
(T10) rejects on any exact repeat among batch classes chosen, from the sizes
alone, so that the expected number of chance repeats is at most
:data:`REPEATED_BATCHES_SHARE` · α: its false-positive rate is at most that
(Markov's inequality), and the rest of the battery runs at the α left.  Only
tests with a meaningful null for the run vote (a test whose approximation
does not hold for so few or so small batches reports ``meaningful=False`` and
is left out of the correction).  The rate is tested one-sided: a declared q
above what the indices show is conservative (ε grows with q) and the shape
tests then use the observed rate.

The four batch-size tests (T1, T2, T4, T9) are functions of the same size
histogram and strongly dependent; they vote as **one family** with an exact
Monte Carlo min-p value (:mod:`dpverify.stats._size_family`; Westfall & Young
1993; Besag & Clifford 1991), uniform under the null at every level, with the
Holm weight of its members together.  The family and the other voting tests
(weight 1 each) are combined by Holm's weighted step-down procedure (Holm
1979, "A simple sequentially rejective multiple test procedure", Scand. J.
Statist. 6:65–70); a member is shown rejected when the family is and its own
Westfall–Young adjusted p-value is within the family's level.  Statistics,
null distributions and what each test catches are documented in
``docs/statistics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import special

from dpverify._validate import check_int, check_probability
from dpverify.errors import InvalidArgument
from dpverify.stats._count_tests import (
    group_membership,
    inclusion_count_dispersion,
    return_gaps,
)
from dpverify.stats._declared import DeclaredNull
from dpverify.stats._diagnosis import diagnose
from dpverify.stats._pair_tests import (
    adjacent_index_pairs,
    consecutive_overlap,
    lagged_overlap_scan,
    repeated_batches,
)
from dpverify.stats._raw import RawTest
from dpverify.stats._results import BatteryResult, TestResult
from dpverify.stats._size_family import SizeFamily
from dpverify.stats._size_tests import (
    _bins,
    batch_size_dispersion,
    batch_size_fit,
    batch_size_support,
    total_inclusions,
    truncation_scan,
)
from dpverify.stats._stream import BatchStream, StreamSummary

__all__ = [
    "DEFAULT_MAX_LAG",
    "REPEATED_BATCHES_SHARE",
    "SIZE_FAMILY",
    "TEST_NAMES",
    "holm",
    "run_battery",
    "run_battery_on",
]

#: Largest lag of the lagged-overlap scan (T7): the window of recent batches kept.
DEFAULT_MAX_LAG = 64

#: The share of α given to ``repeated_batches`` (T10): the expected number of chance
#: repeats among the batches it compares is at most this times α, which bounds its
#: false-positive rate (Markov); the rest of the battery runs at the α left.
REPEATED_BATCHES_SHARE = 1e-3

#: The batch-size tests, tested as one family (:mod:`dpverify.stats._size_family`).
SIZE_FAMILY = ("batch_size_dispersion", "batch_size_fit", "total_inclusions", "truncation_scan")

#: Tests whose evidence is exact (p = 0 on a violation, else 1): outside the correction.
EXACT_TEST_NAMES = ("batch_size_support", "group_membership")

#: The battery's tests, in order (``group_membership`` only for cyclic Poisson).
TEST_NAMES = (
    "batch_size_support",
    "group_membership",
    "batch_size_dispersion",
    "batch_size_fit",
    "inclusion_count_dispersion",
    "total_inclusions",
    "consecutive_overlap",
    "return_gaps",
    "lagged_overlap_scan",
    "adjacent_index_pairs",
    "truncation_scan",
    "repeated_batches",
)


def holm(
    p_values: Iterable[float], alpha: float, weights: Iterable[float] | None = None
) -> tuple[list[bool], list[float]]:
    """Weighted Holm step-down procedure: ``(rejected, adjusted p-values)`` in input order.

    With weights ``w_i > 0`` (all 1: plain Holm), order the tests by ``p_i/w_i``;
    at each stage, with ``R`` the tests not yet rejected, reject the next test
    if ``p_i <= α w_i / Σ_{j∈R} w_j``, otherwise stop.  The adjusted p-value is
    the running maximum of ``min(1, p_i Σ_{j∈R} w_j / w_i)``; a test is rejected
    iff its adjusted p-value is ``<= α``.  Controls the family-wise error rate
    at α under any dependence (Holm 1979, §4).
    """
    ps = [float(p) for p in p_values]
    ws = [1.0] * len(ps) if weights is None else [float(w) for w in weights]
    if len(ws) != len(ps) or any(not w > 0 for w in ws):
        raise InvalidArgument("weights must be positive, one per p-value")
    order = sorted(range(len(ps)), key=lambda i: ps[i] / ws[i])
    remaining = sum(ws)
    adjusted = [1.0] * len(ps)
    running = 0.0
    for i in order:
        running = max(running, min(1.0, ps[i] * remaining / ws[i]))
        adjusted[i] = running
        remaining -= ws[i]
    return [a <= alpha for a in adjusted], adjusted


def _z(p: float) -> float:
    return -float(special.ndtri(p))


def _cannot_see(
    null: DeclaredNull, steps: int, alpha: float, k: int, max_lag: int
) -> dict[str, Any]:
    """What this run's battery could not have detected, as numbers (power 0.8, level α/K).

    * ``rate_bias``: the smallest relative excess of the real rate over the
      declared one the one-sided total-count test detects,
      ``(z_{1−α/K} + z_{0.8}) · sqrt((1 − p)/(G T_g p))`` per group step count.
    * ``oversampled_examples``: the smallest number of examples sampled at
      twice the rate that the count-dispersion test detects: a fraction f of
      examples at rate 2p adds ``f (1 − f) (p T_g)² / (p (1 − p) T_g)`` to the
      mean of X/G, whose null sd is ``sqrt(2/G)``; so
      ``f ≈ (z_{1−α/(2K)} + z_{0.8}) sqrt(2/G) (1 − p)/(p T_g)``.
    * ``lags_not_scanned``: overlaps between batches more than ``max_lag``
      steps apart are not tested (exact repeats excepted: those are found at
      any distance).
    """
    p = null.within_rate
    g = null.group_size
    tg = steps / null.cycle_length
    expected = g * tg * p
    zb = _z(alpha / k) + _z(0.2)
    bias = zb * math.sqrt((1.0 - p) / expected) if expected > 0 and p < 1.0 else math.inf
    if null.sampler == "fixed_size":
        bias = 0.0  # the size is checked exactly
    zf = _z(alpha / (2 * k)) + _z(0.2)
    f = zf * math.sqrt(2.0 / g) * (1.0 - p) / (p * tg) if p * tg > 0 and g > 1 else math.inf
    group = math.ceil(f * null.dataset_size) if f <= 1.0 else None
    return {
        "rate_bias": bias if math.isfinite(bias) else None,
        "oversampled_examples": group,
        "lags_not_scanned": f"more than {max_lag}",
        "max_lag": max_lag,
    }


def _run_tests(
    summary: StreamSummary, null: DeclaredNull, rate: float, repeat_budget: float
) -> list[RawTest]:
    sizes = summary.sizes
    declared = null.size_law()
    shape = null.size_law(rate) if rate != null.within_rate else declared
    tests = [batch_size_support(sizes, null)]
    if null.cycle_length > 1:
        tests.append(group_membership(summary, null))
    tests += [
        batch_size_dispersion(sizes, shape),
        batch_size_fit(sizes, shape),
        inclusion_count_dispersion(summary, null),
        total_inclusions(sizes, declared)
        if null.random_sizes
        else RawTest.insufficient(
            "total_inclusions",
            "a real sampling rate above the declared q",
            "the declared sampler fixes every batch size (checked exactly)",
        ),
        consecutive_overlap(summary, null),
        return_gaps(summary, shape, null),
        lagged_overlap_scan(summary, null),
        adjacent_index_pairs(summary, null),
        truncation_scan(sizes, shape),
        repeated_batches(summary, null, budget=repeat_budget),
    ]
    return tests


def run_battery(
    batches: Iterable[np.ndarray],
    *,
    dataset_size: int,
    sampling_rate: float,
    alpha: float = 1e-3,
    cap: int | None = None,
    seed: int = 0,
    max_lag: int = DEFAULT_MAX_LAG,
    sampler: str | None = None,
    batch_size: int | None = None,
    cycle_length: int = 1,
) -> BatteryResult:
    """Test whether ``batches`` look like the declared sampler (Poisson by default).

    One pass over ``batches`` (any iterable, e.g. a generator reading a
    ledger), memory O(N + T + window).  Tests that do not have enough data
    for their null approximation report ``meaningful=False`` and do not vote.

    Args:
        batches: per logical step, the sorted distinct integer indices sampled.
        dataset_size: N.
        sampling_rate: q, the declared overall inclusion probability.
        alpha: family-wise false-positive rate, in (0, 1).
        cap: declared maximum batch size (Poisson truncated at ``cap``).
        seed: seed of the battery's own randomness (the weights of the batch
            hash, the batch-size family's Monte Carlo and its tie-breaking):
            results are deterministic given it; the family p-value varies with
            it as an exact randomised p-value does.
        max_lag: lags scanned by ``lagged_overlap_scan`` (in steps of a group
            for cyclic Poisson).
        sampler: ``"poisson"`` (default; ``"truncated_poisson"`` when ``cap``
            is given), ``"fixed_size"`` or ``"cyclic_poisson"``.
        batch_size: the declared batch size of ``"fixed_size"``.
        cycle_length: the number of groups of ``"cyclic_poisson"``.

    Returns:
        A :class:`BatteryResult`; ``.passed`` is false iff Holm rejects a test.

    Raises:
        InvalidArgument: bad arguments, or a batch that is not sorted, has
            repeats, or holds an index outside ``[0, N)``.

    Example:
        >>> from dpverify.samplers import PoissonSampler
        >>> s = PoissonSampler(2000, 0.05, seed=1)
        >>> run_battery((s.sample(t) for t in range(200)), dataset_size=2000, sampling_rate=0.05).passed
        True
    """
    if sampler is None:
        sampler = "truncated_poisson" if cap is not None else "poisson"
    null = DeclaredNull(
        dataset_size=dataset_size,
        sampling_rate=sampling_rate,
        sampler=sampler,
        cap=cap,
        batch_size=batch_size,
        cycle_length=cycle_length,
    )
    return run_battery_on(batches, null, alpha=alpha, seed=seed, max_lag=max_lag)


def _window(null: DeclaredNull, max_lag: int) -> int:
    """Steps of history kept: ``max_lag`` steps of a group, bounded to ~4M indices."""
    b = null.cycle_length
    per_step = max(1.0, null.dataset_size * null.sampling_rate)
    within = max(1, min(max_lag, int(4e6 // (b * per_step))))
    return b * within


def run_battery_on(
    batches: Iterable[np.ndarray],
    null: DeclaredNull,
    *,
    alpha: float = 1e-3,
    seed: int = 0,
    max_lag: int = DEFAULT_MAX_LAG,
) -> BatteryResult:
    """:func:`run_battery` against a :class:`~dpverify.stats._declared.DeclaredNull`."""
    alpha = check_probability("alpha", alpha, allow_one=False)
    check_int("seed", seed, minimum=0)
    check_int("max_lag", max_lag, minimum=1)
    stream = BatchStream(null.dataset_size, max_lag=_window(null, max_lag), hash_seed=seed)
    for batch in batches:
        stream.add(batch)
    return _assemble(stream.finish(), null, alpha, seed=seed)


def _shape_rate(summary: StreamSummary, null: DeclaredNull) -> float:
    """The rate the shape tests use: the declared one, or the observed one when it is lower.

    Only a real rate above the declared one refutes; when the indices show a
    lower rate (a conservative declaration) the size and gap tests test the
    shape of the law at the observed rate.  Truncated and fixed-size laws keep
    the declared rate.
    """
    if null.sampler not in ("poisson", "cyclic_poisson") or summary.steps == 0:
        return null.within_rate
    observed = summary.total / (null.group_size * summary.steps)
    return max(min(null.within_rate, observed), 1e-300)


def _family_members(null: DeclaredNull, steps: int) -> list[str]:
    """The size tests in the family: chosen from the declared law and T only (a fixed rule)."""
    law = null.size_law()
    if not null.random_sizes or steps == 0 or law.var <= 0.0:
        return []  # sizes fixed by the declared law: checked exactly (T0), tests vote alone
    members = []
    if steps >= 20 and law.var > 0.0:
        members.append("batch_size_dispersion")
    if _bins(law, steps).size >= 3:
        members.append("batch_size_fit")
    members.append("total_inclusions")
    if steps >= 20 and law.var > 0.0:
        members.append("truncation_scan")
    return members


def _family_threshold(p_values: list[float], weights: list[float], w: float, alpha: float) -> float:
    """The largest family p-value Holm rejects, given the other tests' p-values.

    Holm's rejection of one test is monotone in its p-value, and the boundary
    is one of ``α w / (w + Σ of the weights ranked after it)``; each candidate
    is checked by running Holm.
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i] / weights[i])
    best = alpha * w / (w + sum(weights))  # the first step: always rejected at this p
    for j in range(1, len(order) + 1):
        candidate = alpha * w / (w + sum(weights[i] for i in order[j:]))
        if candidate > best and holm([*p_values, candidate], alpha, [*weights, w])[0][-1]:
            best = candidate
    return best


def _assemble(
    summary: StreamSummary, null: DeclaredNull, alpha: float, *, seed: int = 0
) -> BatteryResult:
    rate = _shape_rate(summary, null)
    repeat_level = REPEATED_BATCHES_SHARE * alpha
    raws = _run_tests(summary, null, rate, repeat_level)
    by_name = {r.name: r for r in raws}
    # Exact tests (p = 0 on a certain violation, else 1) reject on their own and take no
    # share of α.  T10 rejects on any repeat, at a level bounded by repeat_level (Markov).
    exact = [r for r in raws if r.name in EXACT_TEST_NAMES]
    repeats = by_name["repeated_batches"]
    holm_alpha = alpha - repeat_level if repeats.meaningful else alpha
    members = _family_members(null, summary.steps)
    others = [
        r
        for r in raws
        if r.meaningful
        and r.name not in EXACT_TEST_NAMES
        and not (members and r.name in SIZE_FAMILY)
        and r.name != "repeated_batches"
    ]
    p_values = [r.p_value for r in others]
    weights = [r.weight for r in others]
    family_result = None
    if members:
        total_weight = sum(weights) + len(members)
        family = SizeFamily(
            null.size_law(),
            summary.steps,
            members,
            refit=null.sampler in ("poisson", "cyclic_poisson"),
        )
        family_result = family.p_value(
            summary.sizes,
            seed=seed,
            level=_family_threshold(p_values, weights, float(len(members)), holm_alpha),
            own_p=[by_name[m].p_value for m in members],
        )
        p_values.append(family_result.p_value)
        weights.append(float(len(members)))
    rejected_v, adjusted_v = holm(p_values, holm_alpha, weights)
    scale = alpha / holm_alpha  # adjusted p-values are reported against α
    decisions = {
        id(r): (rej, min(1.0, adj * scale))
        for r, rej, adj in zip(others, rejected_v, adjusted_v, strict=False)
    }
    if family_result is not None:
        fam_rej, fam_adj = rejected_v[-1], adjusted_v[-1]
        for name, wy in zip(family_result.members, family_result.member_p, strict=True):
            if family_result.p_value > 0.0:
                adj = min(1.0, max(fam_adj, fam_adj * wy / family_result.p_value) * scale)
            else:  # Bonferroni shortcut at p = 0: the first step's Holm multiplier
                adj = min(1.0, max(fam_adj, wy * total_weight / len(members)) * scale)
            raw = by_name[name]
            decisions[id(raw)] = (bool(fam_rej and raw.meaningful and adj <= alpha), adj)
    decisions.update({id(r): (r.p_value == 0.0, r.p_value) for r in exact})
    decisions[id(repeats)] = (
        bool(repeats.meaningful and repeats.statistic >= 1),
        min(1.0, repeats.p_value / REPEATED_BATCHES_SHARE) if repeats.meaningful else 1.0,
    )
    family_details = (
        {
            "p_value": family_result.p_value,
            "members": list(family_result.members),
            "draws": family_result.draws,
            "method": family_result.method,
            "weight": len(family_result.members),
        }
        if family_result is not None
        else None
    )
    tests = []
    for raw in raws:
        rej, adj = decisions.get(id(raw), (False, 1.0))
        if rej:
            reason = raw.failure
        elif not raw.meaningful:
            reason = raw.note or "not meaningful for this run"
        else:
            reason = f"consistent with the declared sampler (p={raw.p_value:.2g})"
        tests.append(
            TestResult(
                name=raw.name,
                statistic=float(raw.statistic),
                p_value=float(raw.p_value),
                sensitive_to=raw.sensitive_to,
                meaningful=raw.meaningful,
                rejected=rej,
                reason=reason,
                adjusted_p_value=float(adj),
                details=dict(raw.details)
                if family_result is None or raw.name not in family_result.members
                else {**raw.details, "size_family": family_details},
            )
        )
    k = max(1, len(others) + len(members))  # per-test level α/K for "conservative" and "cannot see"
    total = next(t for t in tests if t.name == "total_inclusions")
    observed = summary.total / (null.group_size * summary.steps) if summary.steps else 0.0
    conservative = bool(
        null.random_sizes
        and total.details.get("lower_tail_p", 1.0) <= alpha / k
        and not any(t.rejected for t in tests)
    )
    failures = [t for t in tests if t.rejected]
    cannot = _cannot_see(null, summary.steps, alpha, k, summary.max_lag)
    return BatteryResult(
        tests=tuple(tests),
        alpha=alpha,
        correction="holm",
        dataset_size=null.dataset_size,
        sampling_rate=null.sampling_rate,
        cap=null.cap,
        steps=summary.steps,
        indices=summary.total,
        min_detectable_relative_bias=cannot["rate_bias"]
        if cannot["rate_bias"] is not None
        else math.inf,
        sampler=null.sampler,
        sampler_label=null.label(),
        observed_rate=observed / null.cycle_length,
        conservative=conservative,
        diagnosis=diagnose(
            failures, summary.sizes, null.dataset_size, summary, sampling_rate=null.sampling_rate
        )
        if failures
        else "",
        cannot_see=cannot,
    )
