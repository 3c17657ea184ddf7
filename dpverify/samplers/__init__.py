"""Batch samplers: the Poisson sampler the accountants assume, cyclic Poisson, and shortcuts for contrast."""

from dpverify.samplers._protocol import Sampler as Sampler
from dpverify.samplers.cyclic import CyclicPoissonSampler as CyclicPoissonSampler
from dpverify.samplers.poisson import PoissonSampler as PoissonSampler
from dpverify.samplers.poisson import step_rng as step_rng
from dpverify.samplers.registry import SAMPLER_NAMES as SAMPLER_NAMES
from dpverify.samplers.registry import make_sampler as make_sampler
from dpverify.samplers.shortcuts import BallsInBinsSampler as BallsInBinsSampler
from dpverify.samplers.shortcuts import FixedSizeSampler as FixedSizeSampler
from dpverify.samplers.shortcuts import ShuffleBinomialSampler as ShuffleBinomialSampler
from dpverify.samplers.shortcuts import ShuffleSampler as ShuffleSampler
from dpverify.samplers.shortcuts import TruncatedPoissonSampler as TruncatedPoissonSampler
