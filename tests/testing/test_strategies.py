"""Hypothesis strategies for sampler configurations."""

import pytest
from hypothesis import given, settings

from dpverify.errors import InvalidArgument
from dpverify.samplers import PoissonSampler
from dpverify.testing import SamplerConfig, sampler_configs, sampling_rates


@settings(max_examples=30, deadline=None)
@given(sampler_configs(max_dataset_size=2000, max_steps=50, max_indices=5000))
def test_configs_respect_their_bounds(config):
    assert 1 <= config.dataset_size <= 2000
    assert 1e-3 <= config.sampling_rate <= 1.0
    assert 1 <= config.steps <= 50
    assert config.expected_batch_size * config.steps <= 5000
    sampler = config.build(PoissonSampler)
    batch = sampler.sample(config.steps - 1)
    assert (batch[1:] > batch[:-1]).all()


@settings(max_examples=20, deadline=None)
@given(sampling_rates(0.2, 0.3))
def test_rates_in_range(q):
    assert 0.2 <= q <= 0.3


def test_invalid_ranges_fail_eagerly():
    with pytest.raises(InvalidArgument, match="max_dataset_size"):
        sampler_configs(min_dataset_size=10, max_dataset_size=5)
    with pytest.raises(InvalidArgument, match="max_indices"):
        sampler_configs(min_dataset_size=100, min_sampling_rate=0.5, min_steps=10, max_indices=3)
    with pytest.raises(InvalidArgument, match="min_value"):
        sampling_rates(0.5, 0.1)
    with pytest.raises(InvalidArgument, match="sampling_rate"):
        SamplerConfig(dataset_size=10, sampling_rate=0.0, steps=1)
