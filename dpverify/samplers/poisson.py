"""Poisson subsampling: the sampler DP-SGD's accountants assume.

Each example is included at each step independently with probability q.  We
draw the batch size ``L ~ Binomial(N, q)`` and then ``L`` indices uniformly
without replacement; the resulting set has exactly the law of independent
Bernoulli(q) inclusions (condition on the size: every subset of that size is
equally likely), at cost O(L) instead of O(N).

References:
    Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv:1607.00133.
    Zhu & Wang 2019, "Poisson Subsampled Rényi Differential Privacy", ICML.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_probability

__all__ = ["PoissonSampler", "step_rng"]


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """An independent generator for ``(seed, step)``: step-addressable randomness.

    ``stream`` separates independent uses of the same step (e.g. sampling vs
    anything else) so they never share random numbers.
    """
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(int(stream), int(step))))
    )


@dataclasses.dataclass(frozen=True)
class PoissonSampler:
    """Independent Poisson subsampling at rate ``sampling_rate``.

    Args:
        dataset_size: N >= 1.
        sampling_rate: q in (0, 1].
        seed: integer seed; keep it private (it determines every batch).

    Example:
        >>> s = PoissonSampler(1000, 0.01, seed=0)
        >>> batch = s.sample(5)
        >>> bool((batch == s.sample(5)).all())   # step-addressable
        True
    """

    dataset_size: int
    sampling_rate: float
    seed: int = dataclasses.field(repr=False)

    name = "poisson"
    is_poisson = True
    accounting = "poisson"

    def __post_init__(self) -> None:
        check_int("dataset_size", self.dataset_size, minimum=1)
        check_probability("sampling_rate", self.sampling_rate)
        check_int("seed", self.seed, minimum=0)

    def params(self) -> dict[str, Any]:
        return {}

    def sample(self, step: int) -> np.ndarray:
        check_int("step", step, minimum=0)
        rng = step_rng(self.seed, step)
        size = int(rng.binomial(self.dataset_size, self.sampling_rate))
        idx = rng.choice(self.dataset_size, size=size, replace=False, shuffle=False)
        idx = np.asarray(idx, dtype=np.int64)
        idx.sort()
        return idx
