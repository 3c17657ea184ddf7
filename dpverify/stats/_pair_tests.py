"""Tests on pairs of inclusions, conditional on the batch sizes (T5, T7, T8, T10).

Given its size ``b_t``, a Poisson batch is a uniformly random ``b_t``-subset of
``[0, N)``, independent of every other batch.  So, given the sizes:

* the overlap ``|B_t ∩ B_s|`` of two batches is hypergeometric with mean
  ``b_t b_s / N`` and variance ``b_t b_s (N − b_t)(N − b_s) / (N²(N − 1))``, and
  the overlaps ``|B_t ∩ B_{t−k}|`` for fixed ``k`` are independent across t
  (each batch is uniform whatever the others are);
* the number of adjacent index pairs ``(j, j+1)`` inside a batch has exact
  mean ``b(b−1)/N`` and the variance below, independently across steps.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from dpverify.stats._declared import DeclaredNull
from dpverify.stats._format import number
from dpverify.stats._nulls import count_tails, two_sided
from dpverify.stats._raw import RawTest
from dpverify.stats._stream import StreamSummary

__all__ = ["adjacent_index_pairs", "consecutive_overlap", "lagged_overlap_scan", "repeated_batches"]


def _overlap_moments(sizes: np.ndarray, n: int, lag: int) -> tuple[float, float]:
    a = sizes[lag:].astype(np.float64)
    b = sizes[:-lag].astype(np.float64)
    mean = float(a @ b) / n
    var = float((a * (n - a)) @ (b * (n - b))) / (n * n * (n - 1.0)) if n > 1 else 0.0
    return mean, var


def _cycle(null: DeclaredNull | None, n: int) -> tuple[int, int]:
    return (1, n) if null is None else (null.cycle_length, null.group_size)


def consecutive_overlap(summary: StreamSummary, null: DeclaredNull | None = None) -> RawTest:
    """T5: ``O_1 = Σ_t |B_t ∩ B_{t−1}|``, two-sided, given the sizes.

    Shuffling (also when cut into Binomial-sized chunks, or balls-in-bins)
    makes consecutive batches of an epoch disjoint: far too little overlap.
    For a cyclic sampler with b groups of G the consecutive steps of a group
    are b apart, so the lag is b and the overlap hypergeometric within G.
    """
    b, g = _cycle(null, summary.dataset_size)
    sizes, n = summary.sizes, g
    sensitive = (
        "shuffling (disjoint consecutive batches), repeated or correlated consecutive batches"
    )
    if sizes.size < b + 1 or summary.max_lag < b:
        return RawTest.insufficient(
            "consecutive_overlap", sensitive, "not enough data: needs at least 2 steps of a group"
        )
    x = int(summary.lag_overlap[b])
    mean, var = _overlap_moments(sizes, n, b)
    p_low, p_high = count_tails(x, mean, var)
    if p_low < p_high:
        failure = (
            f"consecutive batches share fewer examples than independent sampling gives ({x} vs "
            f"{number(mean)} expected): batches drawn without replacement across steps (shuffling)?"
        )
    else:
        failure = (
            f"consecutive batches share more examples than independent sampling gives ({x} vs "
            f"{number(mean)} expected): batches repeated or correlated from step to step?"
        )
    return RawTest(
        name="consecutive_overlap",
        statistic=float(x),
        p_value=two_sided(p_low, p_high),
        sensitive_to=sensitive,
        meaningful=mean >= 5.0,
        failure=failure,
        note="" if mean >= 5.0 else f"not enough data: {number(mean)} shared examples expected",
        details={"expected": mean, "direction": "low" if p_low < p_high else "high"},
    )


def lagged_overlap_scan(summary: StreamSummary, null: DeclaredNull | None = None) -> RawTest:
    """T7: max over lags ``2 <= k <= K`` of the excess overlap ``O_k``, Bonferroni over lags.

    Each ``O_k`` gets a one-sided upper p-value ``P(O_k >= x)`` (:func:`count_tails`
    with ``mid=False``: Bonferroni needs valid p-values; with mid-p values the
    scan rejected honest runs at 1.4x its level at 10⁻²); the scan's p-value is
    ``min(1, (K − 1) · min_k p_k)``.  A reused seed or noise key makes
    batches ``k`` steps apart share far more examples than chance.
    """
    b, n = _cycle(null, summary.dataset_size)
    sizes = summary.sizes
    top = min(summary.max_lag, sizes.size - 1)
    sensitive = "a random seed or key reused (batches repeating or correlated a few steps apart)"
    lags = list(range(2 * b, top + 1, b))
    if not lags:
        return RawTest.insufficient(
            "lagged_overlap_scan", sensitive, "not enough data: needs at least 3 steps of a group"
        )
    best_p, best_lag, best_x, best_mean, smallest_mean = 1.0, 2 * b, 0, 0.0, math.inf
    for k in lags:
        mean, var = _overlap_moments(sizes, n, k)
        x = int(summary.lag_overlap[k])
        p_high = count_tails(x, mean, var, mid=False)[1]  # valid p-values for Bonferroni
        smallest_mean = min(smallest_mean, mean)
        if p_high < best_p:
            best_p, best_lag, best_x, best_mean = p_high, k, x, mean
    p = min(1.0, len(lags) * best_p)
    failure = (
        f"batches {best_lag} steps apart share too many examples ({best_x} vs {number(best_mean)} expected): "
        f"a random seed or key reused every {best_lag} steps?"
    )
    meaningful = smallest_mean >= 1.0
    return RawTest(
        name="lagged_overlap_scan",
        statistic=float(best_x),
        p_value=p,
        sensitive_to=sensitive,
        meaningful=meaningful,
        failure=failure,
        note=""
        if meaningful
        else f"not enough data: {number(smallest_mean)} shared examples expected per lag",
        details={"lag": best_lag, "expected": best_mean, "max_lag": top, "direction": "high"},
    )


def _adjacency_moments(sizes: np.ndarray, n: int) -> tuple[float, float]:
    if n < 4:
        return 0.0, 0.0
    b = sizes.astype(np.float64)
    p2 = b * (b - 1) / (n * (n - 1.0))
    p3 = p2 * (b - 2) / (n - 2.0)
    p4 = p3 * (b - 3) / (n - 3.0)
    mu = (n - 1.0) * p2
    var = mu + 2.0 * (n - 2.0) * p3 + (n - 2.0) * (n - 3.0) * p4 - mu * mu
    return float(mu.sum()), float(np.maximum(var, 0.0).sum())


def adjacent_index_pairs(summary: StreamSummary, null: DeclaredNull | None = None) -> RawTest:
    """T8: number of index pairs ``(j, j+1)`` inside the same batch, two-sided, given the sizes.

    For a uniform ``b``-subset of ``[0, N)`` with ``p_r = b!/(b−r)! · (N−r)!/N!``
    (r elements all chosen), the adjacency count has mean ``(N−1) p_2`` and
    variance ``(N−1) p_2 + 2(N−2) p_3 + (N−2)(N−3) p_4 − ((N−1) p_2)²``.
    Sampling contiguous blocks (for I/O speed) makes it far too large.
    """
    sizes, n = summary.sizes, summary.dataset_size
    sensitive = "blocks of contiguous examples sampled together (for I/O speed); strided sampling"
    if null is not None and null.cycle_length > 1:
        return RawTest.insufficient(
            "adjacent_index_pairs",
            sensitive,
            "not computed for cyclic groups (batches of a group are not independent subsets of N)",
        )
    mean, var = _adjacency_moments(sizes, n)
    x = summary.adjacent_pairs
    if mean <= 0.0:
        return RawTest(
            name="adjacent_index_pairs",
            statistic=float(x),
            p_value=1.0,
            sensitive_to=sensitive,
            meaningful=False,
            failure="",
            note="not enough data: no adjacent pairs expected",
        )
    p_low, p_high = count_tails(x, mean, var)
    if p_high <= p_low:
        failure = (
            f"batches contain too many neighbouring indices ({x} adjacent pairs vs {number(mean)} expected): "
            "blocks of contiguous examples sampled together?"
        )
    else:
        failure = (
            f"batches avoid neighbouring indices ({x} adjacent pairs vs {number(mean)} expected): "
            "strided or stratified sampling?"
        )
    return RawTest(
        name="adjacent_index_pairs",
        statistic=float(x),
        p_value=two_sided(p_low, p_high),
        sensitive_to=sensitive,
        meaningful=mean >= 5.0,
        failure=failure,
        note="" if mean >= 5.0 else f"not enough data: {number(mean)} adjacent pairs expected",
        details={"expected": mean, "direction": "high" if p_high <= p_low else "low"},
    )


#: A class of batches (same size, same group) enters the repeat test only when
#: its expected number of equal pairs is at most this.
REPEAT_CLASS_MAX_EXPECTED = 1e-4


def repeated_batches(
    summary: StreamSummary, null: DeclaredNull | None = None, budget: float = REPEAT_CLASS_MAX_EXPECTED
) -> RawTest:
    """T10: pairs of steps with exactly the same batch, at any lag, given the sizes.

    Given its size k, a batch is a uniform k-subset of its group (G examples;
    G = N except for cyclic Poisson), independent of the other batches.  Among
    the m batches of one (group, size) class, equal pairs number ``D_k`` with
    mean ``C(m, 2)/C(G, k)`` (a birthday problem).  Classes enter in increasing
    order of that mean while each is at most :data:`REPEAT_CLASS_MAX_EXPECTED`
    and their total λ stays at most ``budget`` (small or empty batches repeat
    by chance: an empty batch equals every other empty batch); the choice
    depends on the sizes only, so given the sizes ``P(D >= 1) <= E D = λ <=
    budget`` exactly (Markov's inequality, no approximation).  The test
    rejects on any repeat among the classes entered; its p-value is that
    bound, ``min(1, λ)`` when ``D >= 1`` (1 otherwise), so the battery can give
    it a fixed level ``budget`` outside the Holm correction.  Batches are
    compared through a random 64-bit linear hash (collision probability 2⁻⁶⁴
    per pair).
    """
    b, g = _cycle(null, summary.dataset_size)
    sensitive = "a random seed reused (identical batches at any distance)"
    classes = []
    for (_, k), (m, pairs) in summary.repeats_by_class(b).items():
        if m < 2 or k > g:
            continue
        log_pairs = math.log(m * (m - 1) / 2.0)
        log_subsets = float(special.gammaln(g + 1) - special.gammaln(k + 1) - special.gammaln(g - k + 1))
        expected = math.exp(log_pairs - log_subsets)
        if expected <= REPEAT_CLASS_MAX_EXPECTED:
            classes.append((expected, m, pairs))
    lam, d, eligible = 0.0, 0, 0
    for expected, m, pairs in sorted(classes, key=lambda c: c[0]):
        if lam + expected > budget:
            break
        lam += expected
        d += pairs
        eligible += m
    p = 1.0 if d == 0 else float(min(1.0, lam))
    meaningful = eligible >= 2
    return RawTest(
        name="repeated_batches",
        statistic=float(d),
        p_value=p,
        sensitive_to=sensitive,
        meaningful=meaningful,
        failure=(
            f"{number(d)} pairs of steps drew exactly the same batch ({number(lam)} expected): "
            "a random seed reused?"
        ),
        note=""
        if meaningful
        else "not enough data: batches are too small (or too few) for a repeat to be evidence",
        details={"expected": lam, "batches_compared": eligible, "direction": "high", "budget": budget},
    )
