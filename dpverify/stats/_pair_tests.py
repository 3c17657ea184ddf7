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
from scipy import stats

from dpverify.stats._nulls import SizeLaw, count_tails, two_sided
from dpverify.stats._raw import RawTest
from dpverify.stats._stream import StreamSummary

__all__ = ["adjacent_index_pairs", "consecutive_overlap", "lagged_overlap_scan", "repeated_batches"]


def _overlap_moments(sizes: np.ndarray, n: int, lag: int) -> tuple[float, float]:
    a = sizes[lag:].astype(np.float64)
    b = sizes[:-lag].astype(np.float64)
    mean = float(a @ b) / n
    var = float((a * (n - a)) @ (b * (n - b))) / (n * n * (n - 1.0)) if n > 1 else 0.0
    return mean, var


def consecutive_overlap(summary: StreamSummary) -> RawTest:
    """T5: ``O_1 = Σ_t |B_t ∩ B_{t−1}|``, two-sided, given the sizes.

    Shuffling (also when cut into Binomial-sized chunks, or balls-in-bins)
    makes consecutive batches of an epoch disjoint: far too little overlap.
    """
    sizes, n = summary.sizes, summary.dataset_size
    sensitive = (
        "shuffling (disjoint consecutive batches), repeated or correlated consecutive batches"
    )
    if sizes.size < 2 or summary.max_lag < 1:
        return RawTest.insufficient(
            "consecutive_overlap", sensitive, "not enough data: needs at least 2 steps"
        )
    x = int(summary.lag_overlap[1])
    mean, var = _overlap_moments(sizes, n, 1)
    p_low, p_high = count_tails(x, mean, var)
    if p_low < p_high:
        failure = (
            f"consecutive batches share fewer examples than independent sampling gives ({x} vs "
            f"{mean:.1f} expected): batches drawn without replacement across steps (shuffling)?"
        )
    else:
        failure = (
            f"consecutive batches share more examples than independent sampling gives ({x} vs "
            f"{mean:.1f} expected): batches repeated or correlated from step to step?"
        )
    return RawTest(
        name="consecutive_overlap",
        statistic=float(x),
        p_value=two_sided(p_low, p_high),
        sensitive_to=sensitive,
        meaningful=mean >= 5.0,
        failure=failure,
        note="" if mean >= 5.0 else f"not enough data: {mean:.1f} shared examples expected",
        details={"expected": mean},
    )


def lagged_overlap_scan(summary: StreamSummary) -> RawTest:
    """T7: max over lags ``2 <= k <= K`` of the excess overlap ``O_k``, Bonferroni over lags.

    Each ``O_k`` gets a one-sided upper p-value (:func:`count_tails`); the scan's
    p-value is ``min(1, (K − 1) · min_k p_k)``.  A reused seed or noise key makes
    batches ``k`` steps apart share far more examples than chance.
    """
    sizes, n = summary.sizes, summary.dataset_size
    top = min(summary.max_lag, sizes.size - 1)
    sensitive = "a random seed or key reused (batches repeating or correlated a few steps apart)"
    if top < 2:
        return RawTest.insufficient(
            "lagged_overlap_scan", sensitive, "not enough data: needs at least 3 steps"
        )
    best_p, best_lag, best_x, best_mean, smallest_mean = 1.0, 2, 0, 0.0, math.inf
    for k in range(2, top + 1):
        mean, var = _overlap_moments(sizes, n, k)
        x = int(summary.lag_overlap[k])
        p_high = count_tails(x, mean, var)[1]
        smallest_mean = min(smallest_mean, mean)
        if p_high < best_p:
            best_p, best_lag, best_x, best_mean = p_high, k, x, mean
    p = min(1.0, (top - 1) * best_p)
    failure = (
        f"batches {best_lag} steps apart share too many examples ({best_x} vs {best_mean:.1f} expected): "
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
        else f"not enough data: {smallest_mean:.2f} shared examples expected per lag",
        details={"lag": best_lag, "expected": best_mean, "max_lag": top},
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


def adjacent_index_pairs(summary: StreamSummary) -> RawTest:
    """T8: number of index pairs ``(j, j+1)`` inside the same batch, two-sided, given the sizes.

    For a uniform ``b``-subset of ``[0, N)`` with ``p_r = b!/(b−r)! · (N−r)!/N!``
    (r elements all chosen), the adjacency count has mean ``(N−1) p_2`` and
    variance ``(N−1) p_2 + 2(N−2) p_3 + (N−2)(N−3) p_4 − ((N−1) p_2)²``.
    Sampling contiguous blocks (for I/O speed) makes it far too large.
    """
    sizes, n = summary.sizes, summary.dataset_size
    sensitive = "blocks of contiguous examples sampled together (for I/O speed); strided sampling"
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
            f"batches contain too many neighbouring indices ({x} adjacent pairs vs {mean:.1f} expected): "
            "blocks of contiguous examples sampled together?"
        )
    else:
        failure = (
            f"batches avoid neighbouring indices ({x} adjacent pairs vs {mean:.1f} expected): "
            "strided or stratified sampling?"
        )
    return RawTest(
        name="adjacent_index_pairs",
        statistic=float(x),
        p_value=two_sided(p_low, p_high),
        sensitive_to=sensitive,
        meaningful=mean >= 5.0,
        failure=failure,
        note="" if mean >= 5.0 else f"not enough data: {mean:.1f} adjacent pairs expected",
        details={"expected": mean},
    )


def repeated_batches(summary: StreamSummary, law: SizeLaw) -> RawTest:
    """T10: pairs of steps with exactly the same batch, at any lag.

    Two independent batches coincide with probability
    ``π = Σ_k P(b=k)² / C(N, k)`` (``(q² + (1−q)²)^N`` without a cap), so the
    number D of equal pairs among T batches has mean ``λ = C(T, 2) π`` and is
    close to Poisson(λ): p-value ``P(Poisson(λ) >= D)``.  Batches are compared
    through a random 64-bit linear hash (collision probability 2⁻⁶⁴ per pair).
    """
    t = summary.steps
    sensitive = "a random seed reused (identical batches at any distance)"
    lam = t * (t - 1) / 2.0 * law.prob_equal_batches()
    d = summary.repeated_pairs
    p = 1.0 if d == 0 else float(stats.poisson.sf(d - 1, lam))
    meaningful = t >= 2 and lam < 0.01
    return RawTest(
        name="repeated_batches",
        statistic=float(d),
        p_value=p,
        sensitive_to=sensitive,
        meaningful=meaningful,
        failure=f"{d} pairs of steps drew exactly the same batch ({lam:.2g} expected): a random seed reused?",
        note=""
        if meaningful
        else (
            "not enough data: needs at least 2 steps"
            if t < 2
            else f"batches are small enough that {lam:.2g} identical pairs are expected by chance"
        ),
        details={"expected": lam},
    )
