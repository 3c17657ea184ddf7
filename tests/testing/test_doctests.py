"""The runnable examples in the docstrings of the sampler, battery and testing modules."""

import doctest

import pytest

import dpverify.samplers.poisson
import dpverify.stats.battery
import dpverify.testing.check


@pytest.mark.parametrize(
    "module",
    [dpverify.samplers.poisson, dpverify.stats.battery, dpverify.testing.check],
    ids=lambda m: m.__name__,
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
