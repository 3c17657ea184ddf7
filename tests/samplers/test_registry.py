"""make_sampler / SAMPLER_NAMES: every sampler by name, parameters round-trip via params()."""

import numpy as np
import pytest

from dpverify.errors import InvalidArgument
from dpverify.samplers import SAMPLER_NAMES, PoissonSampler, make_sampler


def test_names_cover_the_contract():
    assert set(SAMPLER_NAMES) == {
        "poisson",
        "shuffle",
        "fixed_size",
        "truncated_poisson",
        "balls_in_bins",
        "shuffle_binomial",
        "cyclic_poisson",
    }


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_rebuild_from_header_fields(name):
    params = {"truncated_poisson": {"cap": 30}, "cyclic_poisson": {"cycle_length": 4}}.get(name, {})
    s = make_sampler(name, 1000, 0.02, 7, **params)
    assert s.name == name
    assert s.is_poisson == (name == "poisson")
    again = make_sampler(s.name, s.dataset_size, s.sampling_rate, 7, **s.params())
    assert np.array_equal(again.sample(11), s.sample(11))


def test_names_are_case_insensitive():
    assert make_sampler("Poisson", 10, 0.5, 0).name == "poisson"


def test_poisson_is_the_reference_sampler():
    assert isinstance(make_sampler("poisson", 10, 0.5, 0), PoissonSampler)


def test_errors_name_the_problem():
    with pytest.raises(InvalidArgument, match="sampler='bogus' must be one of"):
        make_sampler("bogus", 10, 0.5, 0)
    with pytest.raises(InvalidArgument, match="no parameter 'cap'"):
        make_sampler("poisson", 10, 0.5, 0, cap=3)
    with pytest.raises(InvalidArgument, match="batch_size=7 does not match"):
        make_sampler("shuffle", 100, 0.1, 0, batch_size=7)
