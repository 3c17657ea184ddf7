"""Pair tests: exact conditional moments of overlaps and adjacency counts."""

import itertools
from math import comb

import numpy as np
import pytest
from scipy import stats

from dpverify.stats._pair_tests import _adjacency_moments, _overlap_moments


@pytest.mark.parametrize(("n", "b"), [(6, 3), (7, 2), (8, 5), (5, 5)])
def test_adjacency_moments_match_enumeration(n, b):
    counts = [int(np.sum(np.diff(c) == 1)) for c in itertools.combinations(range(n), b)]
    counts = np.array(counts, dtype=float)
    mean, var = _adjacency_moments(np.array([b]), n)
    assert mean == pytest.approx(counts.mean())
    assert var == pytest.approx(counts.var())
    assert len(counts) == comb(n, b)


def test_overlap_moments_are_hypergeometric_sums():
    sizes = np.array([10, 25, 3, 40])
    n = 100
    mean, var = _overlap_moments(sizes, n, 1)
    expected_mean = sum(
        stats.hypergeom.mean(n, a, b) for a, b in zip(sizes[1:], sizes[:-1], strict=True)
    )
    expected_var = sum(
        stats.hypergeom.var(n, a, b) for a, b in zip(sizes[1:], sizes[:-1], strict=True)
    )
    assert mean == pytest.approx(expected_mean)
    assert var == pytest.approx(expected_var)


def _summary(batches, n):
    from dpverify.stats._stream import BatchStream

    stream = BatchStream(n, max_lag=8, hash_seed=0)
    for b in batches:
        stream.add(np.asarray(b, dtype=np.int64))
    return stream.finish()


def test_repeat_test_spends_at_most_its_budget():
    """Classes enter only while the expected number of chance repeats stays within the
    budget, so P(reject | sizes) <= λ <= budget (Markov); small batches are left out."""
    from dpverify.stats._pair_tests import repeated_batches

    rng = np.random.default_rng(1)
    n = 1000
    batches = [np.sort(rng.choice(n, k, replace=False)) for k in rng.binomial(n, 0.004, size=2000)]
    summary = _summary(batches, n)
    for budget in (1e-4, 1e-6, 1e-9):
        res = repeated_batches(summary, budget=budget)
        assert res.details["expected"] <= budget
        assert res.statistic == 0 and res.p_value == 1.0
    # a batch of 6 repeated 100 steps later: rejected, p-value the Markov bound λ
    batches[500] = batches[400] = np.arange(100, 106)
    res = repeated_batches(_summary(batches, n), budget=1e-6)
    assert res.statistic >= 1 and res.p_value == pytest.approx(res.details["expected"])
    assert res.p_value <= 1e-6
