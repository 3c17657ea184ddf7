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


def test_truncation_scan_p_value_is_the_exact_mid_p_of_the_maximum():
    sizes = np.array([50, 48, 55, 60, 52] * 10)
    res = truncation_scan(sizes, LAW)
    f = stats.binom.cdf
    upper = 0.5 * (f(60, 1000, 0.05) ** 50 + f(59, 1000, 0.05) ** 50)
    lower = 0.5 * (stats.binom.sf(47, 1000, 0.05) ** 50 + stats.binom.sf(48, 1000, 0.05) ** 50)
    assert res.p_value == pytest.approx(min(1.0, 2 * min(upper, lower)))


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
    assert "10.0% more often" in res.failure and "0.055" in res.failure


def test_total_inclusions_under_a_cap_compares_with_the_capped_mean():
    law = SizeLaw(dataset_size=1000, sampling_rate=0.05, cap=50)
    res = total_inclusions(np.full(200, 52), law)  # above the cap's mean (< 50)
    assert res.p_value < 1e-6
    assert "more often than sampling rate q=0.05 with the declared cap 50" in res.failure
    assert f"expected {law.mean:.4g}" in res.failure and "52 per step" in res.failure
