"""Cyclic Poisson sampler: groups as jax_privacy's CyclicPoissonSampling (equal split), Poisson within."""

import numpy as np
import pytest
from scipy import stats

from dpverify.errors import InvalidArgument
from dpverify.samplers import CyclicPoissonSampler, make_sampler


def test_each_example_only_in_steps_of_its_group():
    s = CyclicPoissonSampler(103, 0.05, 3, cycle_length=4)
    residue = {}
    for t in range(400):
        for i in s.sample(t).tolist():
            assert residue.setdefault(i, t % 4) == t % 4
    groups = [set(s.group(r).tolist()) for r in range(4)]
    assert all(len(g) == 103 // 4 for g in groups)
    assert set().union(*groups) >= set(residue)
    assert len(set().union(*groups)) == 4 * (103 // 4)  # the 3 examples cut off are never used


def test_rate_within_the_group_is_b_times_q():
    """Mean batch size b·q·G: the total over 2000 steps lies in its 99.9% binomial interval."""
    n, q, b, steps = 1000, 0.01, 5, 2000
    s = CyclicPoissonSampler(n, q, 11, cycle_length=b)
    total = sum(s.sample(t).size for t in range(steps))
    lo, hi = stats.binom.interval(0.999, steps * (n // b), b * q)
    assert lo <= total <= hi


def test_step_addressable_and_rebuilt_from_its_params():
    s = make_sampler("cyclic_poisson", 500, 0.02, 9, cycle_length=3)
    assert s.params() == {"cycle_length": 3}
    assert np.array_equal(s.sample(7), CyclicPoissonSampler(500, 0.02, 9, cycle_length=3).sample(7))


def test_bad_parameters():
    with pytest.raises(InvalidArgument, match="must be at most 1"):
        CyclicPoissonSampler(100, 0.3, 0, cycle_length=4)
    with pytest.raises(InvalidArgument, match="cycle_length=200 must be at most dataset_size=100"):
        CyclicPoissonSampler(100, 0.001, 0, cycle_length=200)
