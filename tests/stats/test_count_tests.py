"""Per-example tests: exact moments of the return-gap counts and of the count dispersion."""

import itertools

import numpy as np
import pytest

import dpverify.stats._count_tests as count_tests
from dpverify.stats._count_tests import gap_moments, inclusion_count_dispersion
from dpverify.stats._stream import BatchStream


def _enumerate(steps, q, edges):
    """Exact mean/covariance of the binned gap counts by summing over all 2^T sequences."""
    nb = edges.size - 1
    mean, second = np.zeros(nb), np.zeros((nb, nb))
    for bits in itertools.product([0, 1], repeat=steps):
        prob = np.prod([q if b else 1 - q for b in bits])
        times = [t for t, b in enumerate(bits) if b]
        y = np.zeros(nb)
        for gap in np.diff(times):
            y[np.searchsorted(edges, gap, side="right") - 1] += 1
        mean += prob * y
        second += prob * np.outer(y, y)
    return mean, second - np.outer(mean, mean)


@pytest.mark.parametrize(
    ("steps", "q", "edges"),
    [(8, 0.3, [1, 2, 4, 8]), (9, 0.6, [1, 3, 9]), (7, 0.05, [1, 2, 3, 4, 5, 6, 7])],
)
def test_gap_moments_are_exact(steps, q, edges):
    edges = np.asarray(edges)
    mean, cov = gap_moments(steps, q, edges)
    exact_mean, exact_cov = _enumerate(steps, q, edges)
    np.testing.assert_allclose(mean, exact_mean, atol=1e-14)
    np.testing.assert_allclose(cov, exact_cov, atol=1e-14)


def test_gap_moments_direct_and_binned_paths_agree(monkeypatch):
    steps, q = 700, 0.02
    edges = np.array([1, 2, 5, 20, 60, 150, 400, steps])
    direct = gap_moments(steps, q, edges)
    monkeypatch.setattr(count_tests, "_DIRECT_MAX_STEPS", 0)
    binned = gap_moments(steps, q, edges)
    np.testing.assert_allclose(direct[0], binned[0], rtol=1e-12)
    np.testing.assert_allclose(direct[1], binned[1], rtol=1e-10, atol=1e-15)


def test_count_dispersion_has_its_exact_conditional_moments():
    """Given the sizes, E X = N and Var X = 2N^2/(N-1) (1 - sum v^2 / V^2).

    Monte Carlo over 4000 runs with fixed sizes; tolerances are 5 standard errors
    of the mean and of the variance (false-failure rate < 1e-5).
    """
    n, sizes = 60, [5, 30, 12, 0, 59, 20]
    rng = np.random.default_rng(7)
    xs = []
    for _ in range(4000):
        stream = BatchStream(n)
        for b in sizes:
            stream.add(np.sort(rng.choice(n, size=b, replace=False)))
        xs.append(inclusion_count_dispersion(stream.finish()).statistic)
    xs = np.array(xs)
    p = np.array(sizes) / n
    v = p * (1 - p)
    var = 2 * n * n / (n - 1) * (1 - (v**2).sum() / v.sum() ** 2)
    assert abs(xs.mean() - n) < 5 * np.sqrt(var / xs.size)
    assert abs(xs.var() / var - 1) < 5 * np.sqrt(2 / xs.size) * 1.5
