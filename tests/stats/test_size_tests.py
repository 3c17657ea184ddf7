"""Batch-size tests: exact truncation-scan law, binning, total count."""

import numpy as np
import pytest
from scipy import stats

from dpverify.stats._nulls import SizeLaw
from dpverify.stats._size_tests import (
    _bins,
    batch_size_dispersion,
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
