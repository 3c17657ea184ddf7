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
