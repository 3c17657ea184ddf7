"""Null distributions: size law, two-moment count tails, scaled chi-square."""

import math

import numpy as np
import pytest
from scipy import stats

from dpverify.stats._nulls import SizeLaw, count_tails, scaled_chi2_tails, two_sided


def test_size_law_is_binomial_without_cap():
    law = SizeLaw(dataset_size=1000, sampling_rate=0.03)
    assert law.mean == pytest.approx(30.0)
    assert law.var == pytest.approx(1000 * 0.03 * 0.97)
    assert law.cdf(30) == pytest.approx(stats.binom.cdf(30, 1000, 0.03))
    assert law.sf_inclusive(40) == pytest.approx(stats.binom.sf(39, 1000, 0.03))
    assert law.prob_equal_batches() == pytest.approx((0.03**2 + 0.97**2) ** 1000, rel=1e-9)


def test_truncated_law_puts_the_tail_on_the_cap():
    law = SizeLaw(dataset_size=1000, sampling_rate=0.03, cap=32)
    assert law.support[-1] == 32
    assert law.pmf[-1] == pytest.approx(stats.binom.sf(31, 1000, 0.03))
    assert law.cdf(32) == pytest.approx(1.0)
    k = np.arange(0, 1001)
    exact = np.minimum(k, 32) @ stats.binom.pmf(k, 1000, 0.03)
    assert law.mean == pytest.approx(exact)


@pytest.mark.parametrize("x", [0, 3, 10, 17, 40])
def test_count_tails_poisson_case_is_the_mid_p(x):
    lo, hi = count_tails(x, 10.0, 10.0)
    half = stats.poisson.pmf(x, 10) / 2
    assert lo == pytest.approx(stats.poisson.cdf(x, 10) - half)
    assert hi == pytest.approx(stats.poisson.sf(x, 10) + half, rel=1e-9)


@pytest.mark.parametrize("x", [0, 5, 12, 20])
def test_count_tails_binomial_case(x):
    n, p = 40, 0.3
    lo, hi = count_tails(x, n * p, n * p * (1 - p))
    half = stats.binom.pmf(x, n, p) / 2
    assert lo == pytest.approx(stats.binom.cdf(x, n, p) - half, abs=1e-12)
    assert hi == pytest.approx(stats.binom.sf(x, n, p) + half, abs=1e-12)


def test_count_tails_negative_binomial_case():
    r, p = 4.0, 0.4
    mean, var = stats.nbinom.mean(r, p), stats.nbinom.var(r, p)
    _, hi = count_tails(6, mean, var)
    assert hi == pytest.approx(stats.nbinom.sf(6, r, p) + stats.nbinom.pmf(6, r, p) / 2)


def test_count_tails_degenerate_and_extreme():
    assert count_tails(0, 0.0, 0.0) == (1.0, 1.0)
    assert count_tails(3, 0.0, 0.0) == (0.0, 1.0)
    lo, hi = count_tails(10_000, 500.0, 490.0)  # beyond the binomial's range
    assert lo == 1.0 and 0.0 <= hi < 1e-100


def test_scaled_chi2_reduces_to_chi2():
    lo, hi = scaled_chi2_tails(12.0, 10.0, 20.0)
    assert lo == pytest.approx(stats.chi2.cdf(12.0, 10))
    assert hi == pytest.approx(stats.chi2.sf(12.0, 10))
    assert two_sided(0.3, 0.01) == 0.02
    assert two_sided(0.6, 0.7) == 1.0
    assert math.isclose(sum(scaled_chi2_tails(5.0, 5.0, 1.0)), 1.0)


@pytest.mark.parametrize("x", [0, 3, 8, 20])
def test_count_tails_ordinary_tails_are_valid_p_values(x):
    """mid=False gives P(X <= x) and P(X >= x): P(p <= a) <= a for every a (Bonferroni needs it)."""
    lo, hi = count_tails(x, 8.0, 8.0, mid=False)
    assert lo == pytest.approx(stats.poisson.cdf(x, 8))
    assert hi == pytest.approx(stats.poisson.sf(x - 1, 8), rel=1e-9)
    # validity over the whole support: the probability of p_high <= a never exceeds a
    ks = np.arange(0, 60)
    pmf = stats.poisson.pmf(ks, 8)
    p_high = np.array([count_tails(k, 8.0, 8.0, mid=False)[1] for k in ks])
    p_mid = np.array([count_tails(k, 8.0, 8.0)[1] for k in ks])
    for a in (1e-2, 1e-3, 1e-4, *p_high[15:25]):
        assert pmf[p_high <= a].sum() <= a * (1 + 1e-9)
    # the mid-p is not valid: at a = mid-p(x) the size is P(X >= x) > a — the excess the
    # Bonferroni scan collected over its lags
    a = p_mid[20]
    assert pmf[p_mid <= a].sum() > 1.4 * a
