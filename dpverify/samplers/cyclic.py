"""Cyclic Poisson sampling: Poisson sampling within groups visited in turn.

The examples are split once, at random, into ``b = cycle_length`` groups; step
t samples group ``t mod b`` only, each of its members independently with
probability ``b·q``.  ``q`` (the ledger header's ``sampling_rate``) is the
*overall* rate: an example takes part in one step in b, with probability b·q,
so its rate per step is q and the expected batch is about ``q·N``.

Group assignment (jax_privacy's ``CyclicPoissonSampling`` with its default
``PartitionType.EQUAL_SPLIT``): a uniformly random permutation of ``[0, N)``,
split by ``numpy.array_split`` into b consecutive pieces, each cut to its
first ``G = N // b`` entries; the ``N mod b`` examples cut off are never
sampled.  Batch size ``L ~ Binomial(G, b·q)``, then L members uniformly
without replacement (equivalent to independent inclusions).  Each example is
in at most ``⌈T/b⌉`` steps, which is what the accounting uses:
``SelfComposed(PoissonSampled(b·q, Gaussian(σ)), ⌈T/b⌉)``.

References:
    Choquette-Choo et al. 2023, "Amplified Banded Matrix Factorization", arXiv:2306.08153.
    jax_privacy 2.0, ``jax_privacy.batch_selection.CyclicPoissonSampling``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_probability
from dpverify.errors import InvalidArgument
from dpverify.samplers.poisson import step_rng

__all__ = ["CyclicPoissonSampler"]

_STREAM_GROUPS = 4  # random stream of the partition (see step_rng); steps use stream 0


@functools.lru_cache(maxsize=4)
def _groups(seed: int, dataset_size: int, cycle_length: int) -> tuple[np.ndarray, ...]:
    perm = step_rng(seed, 0, _STREAM_GROUPS).permutation(dataset_size)
    size = dataset_size // cycle_length
    out = []
    for piece in np.array_split(perm, cycle_length):
        g = np.sort(piece[:size]).astype(np.int64)
        g.setflags(write=False)
        out.append(g)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class CyclicPoissonSampler:
    """Cyclic Poisson sampling with ``cycle_length`` groups (see the module docstring).

    Args:
        dataset_size: N >= cycle_length.
        sampling_rate: q, the overall rate; ``cycle_length · q <= 1``.
        seed: the private seed (fixes the groups and every batch).
        cycle_length: b >= 1 (b = 1 is plain Poisson sampling).

    Example:
        >>> s = CyclicPoissonSampler(1000, 0.01, 0, cycle_length=4)
        >>> a, b = set(s.sample(0).tolist()), set(s.sample(4).tolist())
        >>> a.isdisjoint(s.sample(1).tolist())   # another group
        True
    """

    dataset_size: int
    sampling_rate: float
    seed: int = dataclasses.field(repr=False)
    cycle_length: int = 1

    name = "cyclic_poisson"
    is_poisson = False
    accounting = "cyclic_poisson"

    def __post_init__(self) -> None:
        n = check_int("dataset_size", self.dataset_size, minimum=1)
        q = check_probability("sampling_rate", self.sampling_rate)
        check_int("seed", self.seed, minimum=0)
        b = check_int("cycle_length", self.cycle_length, minimum=1)
        if b > n:
            raise InvalidArgument(f"cycle_length={b} must be at most dataset_size={n}")
        if b * q > 1.0:
            raise InvalidArgument(
                f"cycle_length={b} times sampling_rate={q:g} must be at most 1 "
                "(the rate within the active group)"
            )

    def params(self) -> dict[str, Any]:
        return {"cycle_length": int(self.cycle_length)}

    def group(self, step: int) -> np.ndarray:
        """The sorted members of the group sampled at ``step``."""
        check_int("step", step, minimum=0)
        return _groups(self.seed, self.dataset_size, self.cycle_length)[step % self.cycle_length]

    def sample(self, step: int) -> np.ndarray:
        members = self.group(step)
        rng = step_rng(self.seed, step)
        rate = min(1.0, self.cycle_length * self.sampling_rate)
        size = int(rng.binomial(members.size, rate))
        idx = members[rng.choice(members.size, size=size, replace=False, shuffle=False)]
        idx = np.array(idx, dtype=np.int64)
        idx.sort()
        return idx
