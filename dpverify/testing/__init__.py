"""Property testing for samplers: Hypothesis strategies and ``check_sampler``.

Example (in a user's test suite)::

    from dpverify.testing import check_sampler

    def test_my_sampler_is_poisson():
        check_sampler(MySampler)   # MySampler(dataset_size, sampling_rate, seed)
"""

from dpverify.testing.check import DEFAULT_CONFIGS as DEFAULT_CONFIGS
from dpverify.testing.check import SamplerCheck as SamplerCheck
from dpverify.testing.check import SamplerNotCompliant as SamplerNotCompliant
from dpverify.testing.check import check_sampler as check_sampler
from dpverify.testing.check import inspect_sampler as inspect_sampler
from dpverify.testing.strategies import SamplerConfig as SamplerConfig
from dpverify.testing.strategies import dataset_sizes as dataset_sizes
from dpverify.testing.strategies import sampler_configs as sampler_configs
from dpverify.testing.strategies import sampling_rates as sampling_rates
from dpverify.testing.strategies import seeds as seeds
