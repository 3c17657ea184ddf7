"""Tests on batch sizes and the total count (T1, T2, T4, T9).

Under Poisson sampling the batch sizes ``b_1..b_T`` are i.i.d. ``Binomial(N, q)``
(``min(Binomial(N, q), cap)`` for Poisson truncated at a declared cap; see
:class:`~dpverify.stats._nulls.SizeLaw`), and the total ``S = Σ b_t`` is
``Binomial(NT, q)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from dpverify.stats._nulls import SizeLaw, scaled_chi2_tails, two_sided
from dpverify.stats._raw import RawTest

__all__ = ["batch_size_dispersion", "batch_size_fit", "total_inclusions", "truncation_scan"]


def batch_size_dispersion(sizes: np.ndarray, law: SizeLaw) -> RawTest:
    """T1: ``D = Σ_t (b_t − μ)² / σ²`` against its exact first two moments.

    ``E[D] = T`` and ``Var[D] = T (μ₄/σ⁴ − 1)`` (μ₄ the fourth central moment of
    the size law), matched to a scaled χ² (for Binomial(N, q) this is
    ``χ²_T`` up to an O(1/(Nq(1−q))) kurtosis correction).  Two-sided: too
    little variation means fixed-size batches, too much means examples drawn
    in groups or a rate that changes over time.
    """
    t = sizes.size
    var = law.var
    sensitive = (
        "fixed batch sizes (shuffling, sampling without replacement), within-step dependence"
    )
    if t < 2 or var <= 0.0:
        return RawTest.insufficient(
            "batch_size_dispersion",
            sensitive,
            "not enough data: needs at least 2 steps and random batch sizes",
        )
    d = float(np.sum((sizes - law.mean) ** 2) / var)
    kurt = law.central_moment(4) / var**2
    p_low, p_high = scaled_chi2_tails(d, float(t), t * (kurt - 1.0))
    ratio = d / t
    if p_low < p_high:
        failure = (
            f"batch sizes vary less than Poisson sampling allows (variance {ratio:.2g} times the expected): "
            "fixed-size batches?"
        )
    else:
        failure = (
            f"batch sizes vary more than Poisson sampling allows (variance {ratio:.2g} times the expected): "
            "examples drawn together in groups, or a sampling rate that changes over time?"
        )
    return RawTest(
        name="batch_size_dispersion",
        statistic=d,
        p_value=two_sided(p_low, p_high),
        sensitive_to=sensitive,
        meaningful=t >= 20,
        failure=failure,
        note="" if t >= 20 else f"few steps (T={t} < 20): the test has little power",
        details={"variance_ratio": ratio, "steps": t},
    )


def _bins(law: SizeLaw, steps: int) -> np.ndarray:
    """Upper edges (inclusive) of batch-size bins, each with expected count >= 5."""
    target = int(min(32, max(2, steps // 10)))
    cdf = np.cumsum(law.pmf)
    edges = []
    for j in range(1, target):
        pos = int(np.searchsorted(cdf, j / target))
        edges.append(int(law.support[min(pos, law.support.size - 1)]))
    edges.append(int(law.support[-1]))
    edges = sorted(set(edges))
    # Merge bins with expected count < 5 into their right neighbour (last into left).
    probs = [law.cdf(e) for e in edges]
    mass = np.diff([0.0, *probs])
    keep: list[int] = []
    acc = 0.0
    for e, m in zip(edges, mass, strict=True):
        acc += m
        if acc * steps >= 5.0:
            keep.append(e)
            acc = 0.0
    if not keep:
        return np.array([edges[-1]])
    if keep[-1] != edges[-1]:
        keep[-1] = edges[-1]
    return np.asarray(keep)


def batch_size_fit(sizes: np.ndarray, law: SizeLaw) -> RawTest:
    """T2: Pearson χ² of binned batch sizes against the size law (bins of expected count >= 5).

    The last bin is open to the right and the first open to the left, so sizes
    beyond the tabulated support still count.  ``χ²`` with (bins − 1) degrees of
    freedom: the law has no fitted parameters.
    """
    t = sizes.size
    sensitive = "a wrong sampling rate, truncated or otherwise reshaped batch-size distribution"
    edges = _bins(law, t) if t else np.zeros(0)
    if edges.size < 2:
        return RawTest.insufficient(
            "batch_size_fit",
            sensitive,
            f"not enough data: T={t} steps give fewer than 2 usable bins",
        )
    cum = np.array([law.cdf(e) for e in edges[:-1]] + [1.0])
    expected = t * np.diff(np.concatenate(([0.0], cum)))
    which = np.searchsorted(edges, sizes, side="left")
    which = np.minimum(which, edges.size - 1)
    observed = np.bincount(which, minlength=edges.size)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    dof = edges.size - 1
    p = float(stats.chi2.sf(chi2, dof))
    worst = int(np.argmax((observed - expected) ** 2 / expected))
    lo = int(law.support[0]) if worst == 0 else int(edges[worst - 1]) + 1
    hi = int(edges[worst])
    direction = "more" if observed[worst] > expected[worst] else "fewer"
    span = f"{lo}" if lo == hi else f"{lo}-{hi}"
    failure = (
        f"batch sizes do not follow the distribution Poisson sampling gives "
        f"({direction} batches of size {span} than expected: {int(observed[worst])} vs "
        f"{expected[worst]:.1f}): wrong sampling rate or a cap on batch size?"
    )
    return RawTest(
        name="batch_size_fit",
        statistic=chi2,
        p_value=p,
        sensitive_to=sensitive,
        meaningful=dof >= 2,
        failure=failure,
        note="" if dof >= 2 else "few steps: only 2 bins, the test has little power",
        details={"bins": int(edges.size), "degrees_of_freedom": dof},
    )


def total_inclusions(sizes: np.ndarray, law: SizeLaw) -> RawTest:
    """T4: the total count ``S = Σ_t b_t``.

    Exact two-sided binomial (mid-p) test ``S ~ Binomial(NT, q)`` without a cap; with
    a cap, the normal approximation to the T-fold sum of truncated binomials
    (mean ``Tμ``, variance ``Tσ²``).
    """
    t = sizes.size
    n, q = law.dataset_size, law.sampling_rate
    s = int(sizes.sum())
    sensitive = "a sampling rate different from the declared q"
    if t == 0:
        return RawTest(
            name="total_inclusions",
            statistic=0.0,
            p_value=1.0,
            sensitive_to=sensitive,
            meaningful=False,
            failure="",
            note="not enough data: no steps",
        )
    mean = t * law.mean
    if law.cap is None:
        half = 0.5 * float(stats.binom.pmf(s, n * t, q))  # mid-p: see count_tails
        p_low = float(stats.binom.cdf(s, n * t, q)) - half
        p_high = float(stats.binom.sf(s, n * t, q)) + half
    elif law.var > 0:
        z = (s - mean) / math.sqrt(t * law.var)
        p_low, p_high = float(stats.norm.cdf(z)), float(stats.norm.sf(z))
    else:
        p_low = p_high = 1.0 if s == mean else 0.0
    q_hat = s / (n * t)
    q_null = law.mean / n
    rel = q_hat / q_null - 1.0 if q_null > 0 else float("inf")
    word = "more" if rel > 0 else "less"
    if law.cap is None:
        failure = (
            f"examples were included {abs(rel) * 100:.1f}% {word} often than sampling rate "
            f"q={q:g} implies: the real sampling rate looks like {q_hat:.4g}"
        )
    else:  # the null mean is E[min(Binomial(N, q), cap)], not Nq
        failure = (
            f"examples were included {abs(rel) * 100:.1f}% {word} often than sampling rate "
            f"q={q:g} with the declared cap {law.cap} implies: {s / t:.4g} per step on "
            f"average, expected {law.mean:.4g}"
        )
    meaningful = mean >= 10.0
    return RawTest(
        name="total_inclusions",
        statistic=float(s),
        p_value=two_sided(p_low, p_high),
        sensitive_to=sensitive,
        meaningful=meaningful,
        failure=failure,
        note="" if meaningful else f"not enough data: {mean:.1f} inclusions expected",
        details={"expected": mean, "observed_rate": q_hat, "relative_bias": rel},
    )


def _power(x: float, t: int) -> float:
    return math.exp(t * math.log(x)) if x > 0.0 else 0.0


def truncation_scan(sizes: np.ndarray, law: SizeLaw) -> RawTest:
    """T9: undeclared truncation of batch sizes, and a declared cap obeyed.

    The likelihood ratio of "sizes truncated above at c" against the size law
    is ``F(c)^{−T}`` for every ``c >= max_t b_t``; its maximum over ``c`` is at
    ``c = max_t b_t``, so the scan statistic is the largest batch ``M`` and its
    exact law is ``P(M <= m) = F(m)^T`` (mid-p: ``(F(m)^T + F(m−1)^T)/2``).
    Truncation from below is scanned the same way with the smallest batch
    (``P(min >= m) = P(b >= m)^T``); the two are combined two-sided.  When a cap is declared, a batch above it is a
    certain violation (p = 0).
    """
    t = sizes.size
    sensitive = "batch sizes capped (or floored) without saying so; batches above a declared cap"
    if t == 0:
        return RawTest.insufficient("truncation_scan", sensitive, "not enough data: no steps")
    largest, smallest = int(sizes.max()), int(sizes.min())
    if law.cap is not None and largest > law.cap:
        step = int(np.argmax(sizes))
        return RawTest(
            name="truncation_scan",
            statistic=float(largest),
            p_value=0.0,
            sensitive_to=sensitive,
            meaningful=True,
            failure=f"the batch at step {step} has {largest} examples, more than the declared cap of {law.cap}",
            details={"largest": largest, "smallest": smallest, "cap": law.cap},
        )
    p_high_trunc = 0.5 * (_power(law.cdf(largest), t) + _power(law.cdf(largest - 1), t))
    p_low_trunc = 0.5 * (
        _power(law.sf_inclusive(smallest), t) + _power(law.sf_inclusive(smallest + 1), t)
    )
    p = two_sided(p_high_trunc, p_low_trunc)
    if p_high_trunc <= p_low_trunc:
        failure = (
            f"the largest of {t} batches has only {largest} examples, less than Poisson sampling "
            f"almost surely produces: batch sizes capped (truncated) at {largest}?"
        )
    else:
        failure = (
            f"the smallest of {t} batches has {smallest} examples, more than Poisson sampling "
            f"almost surely produces: a minimum batch size enforced?"
        )
    # Meaningful when an unusually tight cap (the 1-1/T quantile) would be detectable.
    meaningful = t >= 20
    return RawTest(
        name="truncation_scan",
        statistic=float(largest),
        p_value=p,
        sensitive_to=sensitive,
        meaningful=meaningful,
        failure=failure,
        note="" if meaningful else f"few steps (T={t} < 20): only gross truncation is detectable",
        details={"largest": largest, "smallest": smallest, "cap": law.cap},
    )
