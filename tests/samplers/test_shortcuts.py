"""Shortcut samplers: protocol, step-addressability, and the structure each one has."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpverify.errors import InvalidArgument
from dpverify.samplers import (
    BallsInBinsSampler,
    FixedSizeSampler,
    PoissonSampler,
    Sampler,
    ShuffleBinomialSampler,
    ShuffleSampler,
    TruncatedPoissonSampler,
)

N, Q = 1000, 0.02


def _all(seed=3):
    return [
        ShuffleSampler(N, Q, seed),
        FixedSizeSampler(N, Q, seed),
        TruncatedPoissonSampler(N, Q, seed, cap=22),
        BallsInBinsSampler(N, Q, seed),
        ShuffleBinomialSampler(N, Q, seed),
    ]


@pytest.mark.parametrize("sampler", _all(), ids=lambda s: s.name)
def test_protocol_and_declarations(sampler):
    assert isinstance(sampler, Sampler)
    assert sampler.is_poisson is False
    assert sampler.accounting != "poisson"
    assert "seed" not in sampler.params()
    assert "seed" not in repr(sampler)


@pytest.mark.parametrize("sampler", _all(), ids=lambda s: s.name)
def test_batches_sorted_distinct_in_range_and_step_addressable(sampler):
    forward = [sampler.sample(t) for t in range(120)]
    for b in forward:
        assert b.dtype == np.int64
        assert np.all(np.diff(b) > 0)
        assert b.size == 0 or (b[0] >= 0 and b[-1] < N)
    fresh = type(sampler)(**{f: getattr(sampler, f) for f in sampler.__dataclass_fields__})
    for t in (119, 3, 77, 0):
        assert np.array_equal(fresh.sample(t), forward[t])


def test_shuffle_epochs_partition_the_data():
    s = ShuffleSampler(N, Q, 0)
    per_epoch = N // s.batch_size
    epoch = np.concatenate([s.sample(t) for t in range(per_epoch)])
    assert np.array_equal(np.sort(epoch), np.arange(N))
    assert not np.array_equal(s.sample(0), s.sample(per_epoch))


def test_fixed_size_has_fixed_size():
    s = FixedSizeSampler(N, Q, 0)
    assert {s.sample(t).size for t in range(50)} == {20}


def test_truncated_poisson_never_exceeds_cap_and_equals_poisson_below_it():
    s = TruncatedPoissonSampler(N, Q, 5, cap=20)
    p = PoissonSampler(N, Q, 5)
    sizes = [s.sample(t).size for t in range(300)]
    assert max(sizes) == 20
    for t in range(300):
        if p.sample(t).size <= 20:
            assert np.array_equal(s.sample(t), p.sample(t))
    assert s.params() == {"cap": 20}
    assert s.accounting == "truncated_poisson"
    with pytest.raises(InvalidArgument, match="cap"):
        TruncatedPoissonSampler(N, Q, 5)


def test_balls_in_bins_each_example_once_per_epoch():
    s = BallsInBinsSampler(N, Q, 1)
    epoch = np.concatenate([s.sample(t) for t in range(s.num_bins)])
    assert np.array_equal(np.sort(epoch), np.arange(N))
    assert len({s.sample(t).size for t in range(s.num_bins)}) > 1  # sizes vary


def test_shuffle_binomial_each_example_once_per_epoch():
    s = ShuffleBinomialSampler(N, Q, 2)
    seen = []
    t = 0
    while sum(b.size for b in seen) < N:
        seen.append(s.sample(t))
        t += 1
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(N))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 300),
    q=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32),
    step=st.integers(0, 500),
)
def test_every_shortcut_is_a_pure_function_of_seed_and_step(n, q, seed, step):
    for cls in (ShuffleSampler, FixedSizeSampler, BallsInBinsSampler, ShuffleBinomialSampler):
        a, b = cls(n, q, seed).sample(step), cls(n, q, seed).sample(step)
        assert np.array_equal(a, b)
        assert np.all(np.diff(a) > 0) and (a.size == 0 or a[-1] < n)


def test_bad_arguments_raise_invalid_argument():
    with pytest.raises(InvalidArgument, match=r"sampling_rate=1\.5"):
        ShuffleSampler(10, 1.5, 0)
    with pytest.raises(InvalidArgument, match="step=-1"):
        FixedSizeSampler(10, 0.5, 0).sample(-1)
