"""PoissonSampler: reproducible, step-addressable, and Binomial(N, q) batch sizes."""

import numpy as np

from dpverify.samplers import PoissonSampler, step_rng


def test_step_addressable_and_sorted():
    s = PoissonSampler(5000, 0.01, seed=11)
    forward = [s.sample(t) for t in range(50)]
    assert all(np.all(np.diff(b) > 0) for b in forward)
    assert np.array_equal(PoissonSampler(5000, 0.01, seed=11).sample(49), forward[49])
    assert not np.array_equal(PoissonSampler(5000, 0.01, seed=12).sample(49), forward[49])


def test_streams_are_independent():
    a = step_rng(1, 5, 0).integers(0, 2**62)
    b = step_rng(1, 5, 1).integers(0, 2**62)
    assert a != b


def test_batch_sizes_are_binomial():
    """Mean of 2000 batch sizes within 4.5 standard errors (false-failure rate < 1e-5)."""
    n, q = 2000, 0.03
    s = PoissonSampler(n, q, seed=0)
    sizes = np.array([s.sample(t).size for t in range(2000)])
    se = np.sqrt(n * q * (1 - q) / sizes.size)
    assert abs(sizes.mean() - n * q) < 4.5 * se
