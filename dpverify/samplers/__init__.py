"""Batch samplers: the Poisson sampler the accountants assume, and shortcuts for contrast."""

from dpverify.samplers._protocol import Sampler as Sampler
from dpverify.samplers.poisson import PoissonSampler as PoissonSampler
from dpverify.samplers.poisson import step_rng as step_rng
