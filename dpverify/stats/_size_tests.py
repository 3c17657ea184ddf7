"""Tests on batch sizes and the total count (T1, T2, T4, T9).

Under Poisson sampling the batch sizes ``b_1..b_T`` are i.i.d. ``Binomial(N, q)``
(``min(Binomial(N, q), cap)`` for Poisson truncated at a declared cap; see
:class:`~dpverify.stats._nulls.SizeLaw`), and the total ``S = Σ b_t`` is
``Binomial(NT, q)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

from dpverify.stats._declared import FLOAT32_REL, DeclaredNull
from dpverify.stats._format import number, times
from dpverify.stats._nulls import (
    MC_FLOOR,
    SizeLaw,
    chernoff_upper_bound,
    multinomial_upper_tail,
    scaled_chi2_tails,
    two_sided,
)
from dpverify.stats._raw import RawTest

__all__ = [
    "MC_TRIGGER",
    "batch_size_dispersion",
    "batch_size_fit",
    "batch_size_support",
    "total_inclusions",
    "truncation_scan",
]


#: An approximate upper-tail p-value of T1 or T2 below this is replaced by the exact
#: Monte Carlo one (:func:`~dpverify.stats._nulls.multinomial_upper_tail`).
MC_TRIGGER = 0.01

#: A χ² p-value of T2 below this is kept as it is (a gross departure): even if the χ²
#: tail were 100 times too light there, an honest run would reach it with probability
#: below 10⁻⁷, far under any α; the Monte Carlo could only say "below 10⁻⁵".
MC_GROSS = 1e-9

#: Size-law probabilities below this are left out of the Monte Carlo histogram.
_MC_MIN_PROB = 1e-14


def batch_size_support(sizes: np.ndarray, null: DeclaredNull) -> RawTest:
    """T0: every batch size is possible under the declared sampler (exact: p = 0 otherwise).

    Impossible sizes: above the cap (truncated Poisson), other than the declared
    batch size (fixed size), above the group size (cyclic Poisson).  A declared
    fixed batch size B above q·N (beyond float32 rounding) means the real rate
    B/N exceeds the declared q: also a certain violation.
    """
    name = "batch_size_support"
    sensitive = "batch sizes the declared sampler cannot produce (above a cap, not the fixed size)"
    details: dict = {}
    bad = np.zeros(sizes.size, dtype=bool)
    why = ""
    if null.sampler == "fixed_size":
        b = int(null.batch_size or 0)
        bad = sizes != b
        why = f"the declared sampler draws exactly {b} examples per step"
        qn = null.sampling_rate * null.dataset_size
        if not bad.any() and b > qn * (1.0 + FLOAT32_REL) + 1e-9:
            return RawTest(
                name=name,
                statistic=float(b),
                p_value=0.0,
                sensitive_to=sensitive,
                meaningful=True,
                failure=(
                    f"every batch has {b} examples but q·N = {number(qn)}: the real sampling "
                    f"rate {b}/{null.dataset_size} is above the declared q = {null.sampling_rate:g}"
                ),
                details={"batch_size": b, "expected_batch_size": qn, "direction": "high"},
            )
    elif null.sampler == "truncated_poisson":
        bad = sizes > int(null.cap or 0)
        why = f"the declared cap is {null.cap}"
    elif null.sampler == "cyclic_poisson":
        bad = sizes > null.group_size
        why = f"a group has only {null.group_size} examples"
    count = int(bad.sum())
    if count == 0:
        return RawTest(
            name=name,
            statistic=0.0,
            p_value=1.0,
            sensitive_to=sensitive,
            meaningful=True,
            failure="",
            details=details,
        )
    step = int(np.flatnonzero(bad)[0])
    failure = (
        f"{number(count)} of {number(sizes.size)} batches have a size the declared sampler cannot "
        f"produce (step {step} has {int(sizes[step])} examples; {why})"
    )
    return RawTest(
        name=name,
        statistic=float(count),
        p_value=0.0,
        sensitive_to=sensitive,
        meaningful=True,
        failure=failure,
        details={"impossible_batches": count, "first_step": step, "size": int(sizes[step])},
    )


def batch_size_dispersion(sizes: np.ndarray, law: SizeLaw) -> RawTest:
    """T1: ``D = Σ_t (b_t − μ)² / σ²`` against its exact first two moments.

    ``E[D] = T`` and ``Var[D] = T (μ₄/σ⁴ − 1)`` (μ₄ the fourth central moment of
    the size law), matched to a scaled χ² (for Binomial(N, q) this is
    ``χ²_T`` up to an O(1/(Nq(1−q))) kurtosis correction).  Two-sided: too
    little variation means fixed-size batches, too much means examples drawn
    in groups or a rate that changes over time.

    The upper tail of the scaled χ² is too light for small batches (one rare
    large batch adds ``(b − μ)²/σ²`` ≫ 1: at q·N = 0.5, T = 500 it gave 2.9×
    the nominal rate at 10⁻⁴ and 4× at 10⁻⁵), so an upper tail below
    :data:`MC_TRIGGER` is recomputed exactly by Monte Carlo over the size
    histogram (``D = Σ_k y_k M_k``, M multinomial;
    :func:`~dpverify.stats._nulls.multinomial_upper_tail`).  The lower tail
    (measured at or below nominal in every regime) keeps the χ² match, so
    fixed-size batches still get p ≈ 0.  Where the Chernoff bound on the
    upper tail is already below the Monte Carlo resolution, the bound is the
    p-value (rigorous, and no draws), so a grossly over-dispersed run still
    gets p ≈ 0; the p-value is then valid to within that resolution (10⁻⁵).
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
    monte_carlo = p_high < MC_TRIGGER
    if monte_carlo:
        keep = law.pmf > _MC_MIN_PROB
        y = (law.support[keep] - law.mean) ** 2 / var
        bound = chernoff_upper_bound(d, y, law.pmf[keep], t) + t * float(law.pmf[~keep].sum())
        if bound < MC_FLOOR:  # below the Monte Carlo resolution: the rigorous bound
            p_high = bound
        else:
            p_high = multinomial_upper_tail(d, law.pmf[keep], t, lambda m: m @ y, seed=1)
    ratio = d / t
    if p_low < p_high:
        failure = (
            f"batch sizes vary less than Poisson sampling allows (variance {times(ratio)} the "
            "expected): fixed-size batches?"
        )
    else:
        failure = (
            f"batch sizes vary more than Poisson sampling allows (variance {times(ratio)} the "
            "expected): examples drawn together in groups, or a sampling rate that changes over time?"
        )
    return RawTest(
        name="batch_size_dispersion",
        statistic=d,
        p_value=two_sided(p_low, p_high),
        sensitive_to=sensitive,
        meaningful=t >= 20,
        failure=failure,
        note="" if t >= 20 else f"few steps (T={t} < 20): the test has little power",
        details={
            "variance_ratio": ratio,
            "steps": t,
            "direction": "low" if p_low < p_high else "high",
            "upper_tail": "monte carlo" if monte_carlo else "scaled chi2",
        },
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
    freedom: the law has no fitted parameters.  With few expected per bin the
    χ² tail is too light (q·N = 0.5, T = 500: 2.2× the nominal rate at 10⁻⁴),
    so a p-value in [:data:`MC_GROSS`, :data:`MC_TRIGGER`) is recomputed
    exactly by Monte Carlo over the multinomial bin counts (resolution
    :data:`~dpverify.stats._nulls.MC_FLOOR`).
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
    monte_carlo = MC_GROSS <= p < MC_TRIGGER
    if monte_carlo:
        probs = expected / t
        p = multinomial_upper_tail(
            chi2, probs, t, lambda m: np.sum((m - expected) ** 2 / expected, axis=1), seed=2
        )
    worst = int(np.argmax((observed - expected) ** 2 / expected))
    lo = int(law.support[0]) if worst == 0 else int(edges[worst - 1]) + 1
    hi = int(edges[worst])
    direction = "more" if observed[worst] > expected[worst] else "fewer"
    span = f"{lo}" if lo == hi else f"{lo}-{hi}"
    failure = (
        f"batch sizes do not follow the distribution Poisson sampling gives "
        f"({direction} batches of size {span} than expected: {int(observed[worst])} vs "
        f"{number(expected[worst])}): a reshaped batch-size distribution or a cap on batch size?"
    )
    return RawTest(
        name="batch_size_fit",
        statistic=chi2,
        p_value=p,
        sensitive_to=sensitive,
        meaningful=dof >= 2,
        failure=failure,
        note="" if dof >= 2 else "few steps: only 2 bins, the test has little power",
        details={
            "bins": int(edges.size),
            "degrees_of_freedom": dof,
            "p_value_by": "monte carlo" if monte_carlo else "chi2",
        },
    )


def total_inclusions(sizes: np.ndarray, law: SizeLaw) -> RawTest:
    """T4: the total count ``S = Σ_t b_t``, one-sided: a real rate above the declared one.

    Exact binomial (mid-p) test ``S ~ Binomial(GT, p)`` without a cap (G the
    examples eligible per step, p their rate); with a cap, the normal
    approximation to the T-fold sum of truncated binomials.  Only a rate *above*
    the declared one refutes (ε grows with q, so a declared q above the real
    rate is conservative); the lower tail is reported in ``details`` so the
    battery can say the declared rate is conservative.
    """
    t = sizes.size
    n, q = law.dataset_size, law.sampling_rate
    s = int(sizes.sum())
    sensitive = "a real sampling rate above the declared q"
    if t == 0:
        return RawTest.insufficient("total_inclusions", sensitive, "not enough data: no steps")
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
    failure = (
        f"examples were included {times(1.0 + rel)} as often as the declared rate implies "
        f"({number(s)} inclusions, {number(mean)} expected): the real sampling rate looks like "
        f"{q_hat:.4g}, above the declared {q:g}"
    )
    meaningful = mean >= 1.0 or s > 0
    return RawTest(
        name="total_inclusions",
        statistic=float(s),
        p_value=min(1.0, max(0.0, p_high)),
        sensitive_to=sensitive,
        meaningful=meaningful,
        failure=failure,
        note="" if meaningful else f"not enough data: {number(mean)} inclusions expected",
        details={
            "expected": mean,
            "observed_rate": q_hat,
            "relative_bias": rel,
            "lower_tail_p": min(1.0, max(0.0, p_low)),
            "direction": "high",
        },
    )


def _power(x: float, t: int) -> float:
    return math.exp(t * math.log(x)) if x > 0.0 else 0.0


def _pileup_p(law: SizeLaw, steps: int, largest: int, at_largest: int) -> float:
    """Exact p-value of the pile-up statistic ``Λ = K · log(P(b >= M) / P(b = M))``.

    M is the largest batch and K the number of batches of exactly that size.
    Λ is the log-likelihood ratio of "sizes clipped at M" (``min(b, M)``: every
    batch that would be larger piles up at M, as jax_privacy's truncated
    Poisson does) against the size law.  Under the null,
    ``P(M = m, K >= k) = F(m)^T · P(Binomial(T, P(b=m)/F(m)) >= k)``, so
    ``P(Λ >= λ) = Σ_m P(M = m, K >= ⌈λ / w_m⌉)`` with ``w_m = log(P(b>=m)/P(b=m))``,
    summed over the support: exact (no Monte Carlo), one-sided.
    """
    a_obs = law.prob(largest)
    if a_obs <= 0.0 or at_largest == 0:
        return 1.0
    lam = at_largest * math.log(max(law.sf_inclusive(largest), a_obs) / a_obs)
    if lam <= 1e-12:
        return 1.0
    support, pmf = law.support, law.pmf
    cdf = np.minimum(np.cumsum(pmf), 1.0)
    sf_incl = np.maximum(1.0 - np.concatenate(([0.0], cdf[:-1])), pmf)
    ok = (pmf > 0.0) & (cdf > 0.0)
    support, pmf, cdf, sf_incl = support[ok], pmf[ok], cdf[ok], sf_incl[ok]
    with np.errstate(divide="ignore", over="ignore"):
        ratio = sf_incl / pmf
    # where the ratio overflows (a pmf in the subnormal tail, e.g. at ImageNet's N) take
    # the logarithm of each side: the same number, finite
    w = np.where(np.isfinite(ratio), np.log(ratio), np.log(sf_incl) - np.log(pmf))
    live = w > 1e-15
    k_star = np.full(support.size, steps + 1.0)
    k_star[live] = np.ceil(lam / w[live] - 1e-9)
    k_star = np.maximum(k_star, 1.0)
    use = k_star <= steps
    if not use.any():
        return 0.0
    r = np.minimum(1.0, pmf[use] / cdf[use])
    log_terms = steps * np.log(cdf[use]) + stats.binom.logsf(k_star[use] - 1.0, steps, r)
    return float(min(1.0, np.exp(special.logsumexp(log_terms))))


def truncation_scan(sizes: np.ndarray, law: SizeLaw) -> RawTest:
    """T9: undeclared caps (a pile-up at the largest size, or sizes capped) and floors.

    Three exact scans, Bonferroni-combined: (a) the pile-up statistic of
    :func:`_pileup_p` (many batches at exactly the largest size, none above:
    a cap that clips); (b) the largest batch ``M`` with ``P(M <= m) = F(m)^T``
    (mid-p; a cap that redraws or rejects large batches); (c) the smallest
    batch, ``P(min >= m) = P(b >= m)^T`` (a floor).  A declared cap is part of
    the size law, so piling up at it is expected.
    """
    t = sizes.size
    sensitive = "batch sizes capped (or floored) without saying so"
    if t == 0:
        return RawTest.insufficient("truncation_scan", sensitive, "not enough data: no steps")
    if law.var <= 0.0:
        return RawTest.insufficient(
            "truncation_scan", sensitive, "batch sizes are not random under the declared sampler"
        )
    largest, smallest = int(sizes.max()), int(sizes.min())
    at_largest = int(np.count_nonzero(sizes == largest))
    p_pile = _pileup_p(law, t, largest, at_largest)
    p_max = 0.5 * (_power(law.cdf(largest), t) + _power(law.cdf(largest - 1), t))
    p_min = 0.5 * (
        _power(law.sf_inclusive(smallest), t) + _power(law.sf_inclusive(smallest + 1), t)
    )
    p = float(min(1.0, 3.0 * min(p_pile, p_max, p_min)))
    if p_pile <= min(p_max, p_min):
        failure = (
            f"an undeclared cap on batch size at {largest}: {at_largest} of {t} batches have exactly "
            f"{largest} examples and none more ({number(t * law.prob(largest))} expected at that "
            "size): batches truncated at a maximum size?"
        )
        kind = "pileup"
    elif p_max <= p_min:
        failure = (
            f"an undeclared cap on batch size at {largest}?: the largest of {t} batches has only "
            f"{largest} examples, less than the declared sampler almost surely produces"
        )
        kind = "max"
    else:
        failure = (
            f"the smallest of {t} batches has {smallest} examples, more than the declared "
            "sampler almost surely produces: a minimum batch size enforced?"
        )
        kind = "min"
    meaningful = t >= 20
    return RawTest(
        name="truncation_scan",
        statistic=float(largest),
        p_value=p,
        sensitive_to=sensitive,
        meaningful=meaningful,
        failure=failure,
        note="" if meaningful else f"few steps (T={t} < 20): only gross truncation is detectable",
        details={
            "largest": largest,
            "at_largest": at_largest,
            "smallest": smallest,
            "cap": law.cap,
            "kind": kind,
            "p_pileup": p_pile,
            "p_max": p_max,
            "p_min": p_min,
        },
    )
