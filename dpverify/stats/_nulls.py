"""Null distributions shared by the battery's tests.

* :class:`SizeLaw` — the law of one batch size under the declared sampler:
  ``Binomial(N, q)``, or ``min(Binomial(N, q), cap)`` for Poisson truncated at
  a cap (dp-accounting's ``TruncatedSubsampledGaussianDpEvent``: a batch larger
  than the cap is cut down to a uniformly random subset of ``cap``).
* :func:`count_tails` — both tail probabilities of a count known only through
  its exact mean and variance, by the two-moment discrete approximation
  natural to its dispersion (binomial when under-dispersed, Poisson, negative
  binomial when over-dispersed).
* :func:`scaled_chi2_tails` — both tails of a non-negative statistic matched to
  ``c·χ²_ν`` by its mean and variance (Satterthwaite 1946, Welch 1947).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from scipy import special, stats

__all__ = ["SizeLaw", "count_tails", "scaled_chi2_tails", "two_sided"]


def two_sided(p_low: float, p_high: float) -> float:
    """Two-sided p-value from the two one-sided ones: ``min(1, 2·min)``."""
    return float(min(1.0, 2.0 * min(p_low, p_high)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SizeLaw:
    """Law of one batch size: ``Binomial(N, q)``, truncated to ``min(·, cap)`` when ``cap`` is set.

    With ``fixed_size`` set the law is the point mass at that size (sampling a
    fixed number of examples without replacement).  The pmf is tabulated on the support points that carry any probability in
    float64 (at most a few thousand values), so every moment and tail is exact
    to rounding.
    """

    dataset_size: int
    sampling_rate: float
    cap: int | None = None
    fixed_size: int | None = None

    def __post_init__(self) -> None:
        n, q = self.dataset_size, self.sampling_rate
        if self.fixed_size is not None:
            for name, value in (
                ("_support", np.array([self.fixed_size], dtype=np.int64)),
                ("_pmf", np.ones(1)),
                ("_cdf", np.ones(1)),
            ):
                object.__setattr__(self, name, value)
            return
        sd = math.sqrt(n * q * (1.0 - q))
        lo = max(0, math.floor(n * q - 40.0 * sd - 40))
        hi = min(n, math.ceil(n * q + 40.0 * sd + 40))
        support = np.arange(lo, hi + 1, dtype=np.int64)
        pmf = stats.binom.pmf(support, n, q)
        if self.cap is not None and self.cap < hi:
            keep = support <= self.cap
            tail = float(stats.binom.sf(self.cap, n, q))
            support, pmf = support[keep], pmf[keep]
            if support.size == 0:  # cap below the whole numerical support
                support, pmf = np.array([self.cap], dtype=np.int64), np.zeros(1)
            pmf[-1] += tail
        pmf = pmf / pmf.sum()
        object.__setattr__(self, "_support", support)
        object.__setattr__(self, "_pmf", pmf)
        object.__setattr__(self, "_cdf", np.minimum(np.cumsum(pmf), 1.0))

    @property
    def support(self) -> np.ndarray:
        return self._support  # type: ignore[attr-defined]

    @property
    def pmf(self) -> np.ndarray:
        return self._pmf  # type: ignore[attr-defined]

    def cdf(self, k: float) -> float:
        """P(b <= k)."""
        pos = np.searchsorted(self.support, k, side="right") - 1
        return 0.0 if pos < 0 else float(self._cdf[pos])  # type: ignore[attr-defined]

    def prob(self, k: int) -> float:
        """P(b = k) (0 off the support)."""
        pos = np.searchsorted(self.support, k)
        if pos < self.support.size and self.support[pos] == k:
            return float(self.pmf[pos])
        return 0.0

    def sf_inclusive(self, k: float) -> float:
        """P(b >= k)."""
        return float(max(0.0, 1.0 - self.cdf(k - 1)))

    def central_moment(self, order: int) -> float:
        return float(np.sum(self.pmf * (self.support - self.mean) ** order))

    @property
    def mean(self) -> float:
        return float(np.sum(self.pmf * self.support))

    @property
    def var(self) -> float:
        """Variance; 0 when the law is a point mass up to rounding (e.g. a cap far below Nq)."""
        var = self.central_moment(2)
        return float(var) if var > 1e-12 else 0.0

    def prob_equal_batches(self) -> float:
        """P(two independent batches are the same set) = Σ_k P(b=k)² / C(N, k)."""
        with np.errstate(divide="ignore"):
            logp = np.log(self.pmf)
        n = self.dataset_size
        k = self.support
        log_binom = special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
        terms = (2.0 * logp - log_binom)[np.isfinite(logp)]
        top = float(terms.max())
        return float(np.exp(top) * np.sum(np.exp(terms - top)))


def _matched_family(mean: float, var: float) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """``(cdf, sf)`` of the two-moment discrete match (see :func:`count_tails`)."""
    ratio = var / mean
    if ratio < 1.0 - 1e-6:  # binomial with real-valued n: regularised incomplete beta
        p = 1.0 - ratio
        n = mean / p
        sd = math.sqrt(var)

        def cdf(k: float) -> float:
            if k < 0:
                return 0.0
            if k >= n:
                return 1.0
            return float(special.betainc(n - k, k + 1.0, 1.0 - p))

        def sf(k: float) -> float:
            if k < 0:
                return 1.0
            if k + 1.0 >= n:  # beyond the approximation's range: use the normal tail
                return float(stats.norm.sf((k + 0.5 - mean) / sd))
            return float(special.betainc(k + 1.0, n - k, p))

        return cdf, sf
    if ratio <= 1.0 + 1e-6:
        return (lambda k: float(stats.poisson.cdf(k, mean))), (
            lambda k: float(stats.poisson.sf(k, mean))
        )
    r = mean * mean / (var - mean)
    p = mean / var
    return (lambda k: float(stats.nbinom.cdf(k, r, p))), (lambda k: float(stats.nbinom.sf(k, r, p)))


def count_tails(x: float, mean: float, var: float) -> tuple[float, float]:
    """Mid-p tails ``(P(X < x) + P(X = x)/2, P(X > x) + P(X = x)/2)`` of a count ``X``.

    ``X`` is known through its exact mean and variance; the approximation
    matches both within the discrete family that has the count's dispersion:
    ``Binomial(n, p)`` with real ``n`` when ``var < mean`` (sums of
    hypergeometric or Bernoulli variables), Poisson when equal, negative
    binomial when ``var > mean`` (positively correlated indicators).  Mid-p
    values (Lancaster 1961) keep a discrete test's false-positive rate close
    to its nominal level instead of far below it.
    """
    x = float(x)
    if mean <= 0.0 or var <= 0.0:
        same = abs(x - mean) < 1e-9 * max(1.0, mean)
        return (1.0, 1.0) if same else ((0.0, 1.0) if x > mean else (1.0, 0.0))
    cdf, sf = _matched_family(mean, var)
    p_low = 0.5 * (cdf(x) + cdf(x - 1.0))
    p_high = 0.5 * (sf(x) + sf(x - 1.0))
    return p_low, p_high


def scaled_chi2_tails(statistic: float, mean: float, var: float) -> tuple[float, float]:
    """``(P(D <= d), P(D >= d))`` for ``D ≈ c·χ²_ν`` with ``c = var/(2 mean)``, ``ν = 2 mean²/var``."""
    if var <= 0.0:
        same = abs(statistic - mean) < 1e-9 * max(1.0, mean)
        return (1.0, 1.0) if same else ((0.0, 1.0) if statistic > mean else (1.0, 0.0))
    c = var / (2.0 * mean)
    nu = 2.0 * mean * mean / var
    return float(stats.chi2.cdf(statistic / c, nu)), float(stats.chi2.sf(statistic / c, nu))
