"""Batch-size tests: exact truncation-scan law, binning, total count."""

import numpy as np
import pytest
from scipy import stats

from dpverify.stats._nulls import MC_FLOOR, SizeLaw, multinomial_upper_tail
from dpverify.stats._size_tests import (
    _bins,
    batch_size_dispersion,
    batch_size_fit,
    total_inclusions,
    truncation_scan,
)

LAW = SizeLaw(dataset_size=1000, sampling_rate=0.05)


def test_truncation_scan_combines_three_exact_scans():
    sizes = np.array([50, 48, 55, 60, 52] * 10)
    res = truncation_scan(sizes, LAW)
    f = stats.binom.cdf
    upper = 0.5 * (f(60, 1000, 0.05) ** 50 + f(59, 1000, 0.05) ** 50)
    lower = 0.5 * (stats.binom.sf(47, 1000, 0.05) ** 50 + stats.binom.sf(48, 1000, 0.05) ** 50)
    assert res.details["p_max"] == pytest.approx(upper)
    assert res.details["p_min"] == pytest.approx(lower)
    assert res.p_value == pytest.approx(min(1.0, 3 * min(upper, lower, res.details["p_pileup"])))


def test_pileup_p_value_is_exact_by_enumeration():
    """P(Λ >= λ) of the pile-up statistic equals brute-force enumeration of all T-tuples."""
    import itertools

    from dpverify.stats._size_tests import _pileup_p

    law = SizeLaw(dataset_size=8, sampling_rate=0.4)
    steps = 3
    sup, pmf = law.support, law.pmf

    def stat(sizes):
        m = max(sizes)
        k = sizes.count(m)
        return k * np.log(max(law.sf_inclusive(m), law.prob(m)) / law.prob(m))

    outcomes = [(stat(list(c)), np.prod([pmf[list(sup).index(x)] for x in c])) for c in itertools.product(sup.tolist(), repeat=steps)]
    for obs in ([6, 6, 5], [7, 7, 7], [3, 2, 3], [8, 1, 2]):
        lam = stat(obs)
        brute = sum(p for s, p in outcomes if s >= lam - 1e-9)
        m = max(obs)
        assert _pileup_p(law, steps, m, obs.count(m)) == pytest.approx(min(1.0, brute), rel=1e-6, abs=1e-12)


def test_pileup_finds_jax_privacy_truncation():
    """Cap 122 for expected batch 100 (mean + 2.2 sd), T = 1000: found far below alpha."""
    law = SizeLaw(dataset_size=10_000, sampling_rate=0.01)
    rng = np.random.default_rng(0)
    sizes = np.minimum(rng.binomial(10_000, 0.01, size=1000), 122)
    res = truncation_scan(sizes, law)
    assert res.details["kind"] == "pileup" and res.p_value < 1e-8
    assert "undeclared cap on batch size at 122" in res.failure


def test_bins_have_at_least_five_expected():
    for steps in (10, 57, 400, 5000):
        edges = _bins(LAW, steps)
        cum = np.array([LAW.cdf(e) for e in edges[:-1]] + [1.0])
        expected = steps * np.diff(np.concatenate(([0.0], cum)))
        assert (expected >= 5 - 1e-9).all() or edges.size == 1


def test_dispersion_reports_direction_in_words():
    fixed = batch_size_dispersion(np.full(100, 50), LAW)
    assert fixed.p_value < 1e-10 and "vary less" in fixed.failure
    rng = np.random.default_rng(0)
    wild = batch_size_dispersion(rng.integers(0, 100, size=100), LAW)
    assert wild.p_value < 1e-10 and "vary more" in wild.failure


def test_total_inclusions_reports_the_observed_rate():
    res = total_inclusions(np.full(200, 55), LAW)
    assert res.p_value < 1e-6
    assert "1.1× as often" in res.failure and "0.055" in res.failure
    assert "above the declared 0.05" in res.failure
    # One-sided: a rate below the declared one does not refute, it is reported.
    low = total_inclusions(np.full(200, 45), LAW)
    assert low.p_value > 0.5 and low.details["lower_tail_p"] < 1e-6


def test_total_inclusions_under_a_cap_compares_with_the_capped_mean():
    law = SizeLaw(dataset_size=1000, sampling_rate=0.05, cap=50)
    res = total_inclusions(np.full(200, 52), law)  # above the cap's mean (< 50)
    assert res.p_value < 1e-6
    assert f"{law.mean * 200:,.0f} expected" in res.failure and "10,400 inclusions" in res.failure


def test_truncation_scan_at_imagenet_size_has_no_overflow():
    """N = 1 281 167, q = 0.012788: the pile-up weights stay finite (no RuntimeWarning)."""
    import warnings

    law = SizeLaw(dataset_size=1_281_167, sampling_rate=0.012788)
    sizes = np.random.default_rng(0).binomial(1_281_167, 0.012788, size=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = truncation_scan(sizes, law)
    assert 0.0 <= res.p_value <= 1.0


# --- exact upper tails for small batches (T1, T2) ---------------------------------------

SMALL = SizeLaw(dataset_size=1000, sampling_rate=0.0005)  # q·N = 0.5: skewed sizes


def test_dispersion_upper_tail_matches_direct_simulation_for_small_batches():
    """The Monte Carlo upper tail of T1 equals P(D >= d) simulated directly (T = 500, q·N = 0.5).

    The old scaled-χ² tail gave 2.9x the nominal rate at 1e-4 in this regime.
    """
    t = 500
    rng = np.random.default_rng(20261130)
    draws = rng.binomial(1000, 0.0005, size=(40_000, t))
    d_null = ((draws - SMALL.mean) ** 2).sum(axis=1) / SMALL.var
    d_obs = np.quantile(d_null, 0.99)
    sizes = next(s for s in draws if ((s - SMALL.mean) ** 2).sum() / SMALL.var >= d_obs)
    res = batch_size_dispersion(sizes, SMALL)
    direct = float(np.mean(d_null >= ((sizes - SMALL.mean) ** 2).sum() / SMALL.var - 1e-9))
    assert res.details["upper_tail"] == "monte carlo"
    # two binomial standard errors of each estimate, plus 10 %
    tol = 4 * np.sqrt(direct / 40_000) + 0.1 * direct
    assert abs(res.p_value / 2 - direct) < tol


def test_honest_small_batches_are_not_rejected_beyond_nominal():
    """600 honest size sequences at q·N = 0.5, T = 500: T1 and T2 p < 1e-2 at most 15 times each.

    P(Binomial(600, 0.01) > 15) = 0.0011: the false-positive rate of this test
    is at most 0.2 % when the p-values are exact (fixed seed: deterministic).
    """
    rng = np.random.default_rng(7)
    low1 = low2 = 0
    for _ in range(600):
        sizes = rng.binomial(1000, 0.0005, size=500)
        low1 += batch_size_dispersion(sizes, SMALL).p_value < 1e-2
        low2 += batch_size_fit(sizes, SMALL).p_value < 1e-2
    assert stats.binom.sf(15, 600, 0.01) < 0.0012
    assert low1 <= 15 and low2 <= 15


def test_shortcuts_still_fail_with_exact_tails():
    """Fixed-size batches (lower tail) and a rate switching between q and 3q (upper tail) still fail."""
    law = SizeLaw(dataset_size=10_000, sampling_rate=0.01)
    fixed = batch_size_dispersion(np.full(500, 100), law)
    assert fixed.p_value < 1e-100 and fixed.details["direction"] == "low"
    rng = np.random.default_rng(3)
    mixed = np.where(np.arange(500) % 2 == 0, rng.binomial(10_000, 0.005, 500), rng.binomial(10_000, 0.015, 500))
    over = batch_size_dispersion(mixed, law)
    assert over.details["upper_tail"] == "monte carlo" and over.p_value < 1e-10
    capped = batch_size_fit(np.minimum(rng.binomial(10_000, 0.01, 500), 105), law)
    assert capped.p_value < 1e-9  # gross: the χ² value is kept
    mild = batch_size_fit(np.minimum(rng.binomial(10_000, 0.01, 500), 118), law)
    assert mild.details["p_value_by"] == "monte carlo" and mild.p_value < 1e-3


def test_monte_carlo_tail_is_deterministic_and_floored():
    probs = np.array([0.5, 0.5])
    stat = lambda m: m[:, 0].astype(float)  # noqa: E731
    assert multinomial_upper_tail(0, probs, 10, stat, seed=1) == 1.0  # every draw exceeds: 50/10000 stops
    far = multinomial_upper_tail(11, probs, 10, stat, seed=1)
    assert far == MC_FLOOR == multinomial_upper_tail(11, probs, 10, stat, seed=1)
    mid = multinomial_upper_tail(8, probs, 10, stat, seed=1)
    assert mid == pytest.approx(stats.binom.sf(7, 10, 0.5), rel=0.2)
