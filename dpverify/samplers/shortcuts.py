"""Shortcut samplers: what implementations often do instead of Poisson sampling.

None of these implements the Poisson subsampling the DP-SGD accountants
assume.  They exist for teaching and to test the auditor: each one declares
``is_poisson = False`` and names the event it *really* implements in
``accounting``, so a ledger written with one of them is honest about it.

Every sampler is step-addressable, like :class:`~dpverify.samplers.PoissonSampler`:
``sample(t)`` is a pure function of ``(seed, t)``.  Epoch-based samplers derive
the permutation (or bin assignment) of epoch ``e`` from
``step_rng(seed, e, stream)``, with a stream number of their own, and cache the
current epoch so sampling step after step costs O(batch) amortised.

References:
    Chua et al. 2024, "How Private are DP-SGD Implementations?", ICML
    (shuffling versus Poisson subsampling; balls-in-bins).
    Chua et al. 2025, "Scalable DP-SGD: Shuffling vs. Poisson Subsampling"
    (truncated Poisson), arXiv:2411.04205.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_probability
from dpverify.errors import InvalidArgument
from dpverify.samplers.poisson import step_rng

__all__ = [
    "BallsInBinsSampler",
    "FixedSizeSampler",
    "ShuffleBinomialSampler",
    "ShuffleSampler",
    "TruncatedPoissonSampler",
]

# Random streams (see ``step_rng``): one per kind of use, never shared.
_STREAM_PERMUTATION = 1
_STREAM_BINS = 2
_STREAM_CHUNKS = 3


def _fixed_batch_size(dataset_size: int, sampling_rate: float) -> int:
    """Batch size of a fixed-size sampler with the same expected size: round(qN) >= 1."""
    return max(1, min(dataset_size, round(sampling_rate * dataset_size)))


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, dataset_size: int) -> np.ndarray:
    perm = step_rng(seed, epoch, _STREAM_PERMUTATION).permutation(dataset_size)
    perm.setflags(write=False)
    return perm


@functools.lru_cache(maxsize=4)
def _bins(seed: int, epoch: int, dataset_size: int, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples grouped by their random bin: (examples sorted by bin, bin start offsets)."""
    assignment = step_rng(seed, epoch, _STREAM_BINS).integers(0, num_bins, size=dataset_size)
    order = np.argsort(assignment, kind="stable")
    starts = np.searchsorted(assignment[order], np.arange(num_bins + 1))
    return order, starts


@functools.lru_cache(maxsize=4096)
def _chunk_bounds(seed: int, epoch: int, dataset_size: int, sampling_rate: float) -> np.ndarray:
    """Cut points of epoch ``epoch``'s permutation into Binomial(N, q)-sized chunks."""
    rng = step_rng(seed, epoch, _STREAM_CHUNKS)
    bounds = [0]
    while bounds[-1] < dataset_size:
        size = int(rng.binomial(dataset_size, sampling_rate))
        bounds.append(min(dataset_size, bounds[-1] + size))
    return np.asarray(bounds, dtype=np.int64)


def _sorted(idx: np.ndarray) -> np.ndarray:
    out = np.array(idx, dtype=np.int64)
    out.sort()
    return out


@dataclasses.dataclass(frozen=True)
class _Base:
    dataset_size: int
    sampling_rate: float
    seed: int = dataclasses.field(repr=False)

    is_poisson = False

    def __post_init__(self) -> None:
        check_int("dataset_size", self.dataset_size, minimum=1)
        check_probability("sampling_rate", self.sampling_rate)
        check_int("seed", self.seed, minimum=0)

    def params(self) -> dict[str, Any]:
        return {}


@dataclasses.dataclass(frozen=True)
class ShuffleSampler(_Base):
    """Shuffled fixed-size batches: each epoch, a random permutation cut into batches.

    Batch size ``B = round(qN)``; an epoch has ``N // B`` steps (the last
    ``N mod B`` examples of each permutation are dropped, as ``drop_last`` does).
    Each example appears at most once per epoch, so consecutive batches never
    overlap within an epoch and per-example counts are far too even.
    """

    name = "shuffle"
    accounting = "shuffle"

    @property
    def batch_size(self) -> int:
        return _fixed_batch_size(self.dataset_size, self.sampling_rate)

    def params(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}

    def sample(self, step: int) -> np.ndarray:
        check_int("step", step, minimum=0)
        size = self.batch_size
        per_epoch = self.dataset_size // size
        epoch, pos = divmod(step, per_epoch)
        perm = _permutation(self.seed, epoch, self.dataset_size)
        return _sorted(perm[pos * size : (pos + 1) * size])


@dataclasses.dataclass(frozen=True)
class FixedSizeSampler(_Base):
    """``B = round(qN)`` examples uniformly without replacement, independently per step.

    Accounted (by RDP only) as sampling without replacement under the
    replace-one relation; batch sizes never vary.
    """

    name = "fixed_size"
    accounting = "fixed_size_without_replacement"

    @property
    def batch_size(self) -> int:
        return _fixed_batch_size(self.dataset_size, self.sampling_rate)

    def params(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}

    def sample(self, step: int) -> np.ndarray:
        check_int("step", step, minimum=0)
        rng = step_rng(self.seed, step)
        return _sorted(rng.choice(self.dataset_size, size=self.batch_size, replace=False))


@dataclasses.dataclass(frozen=True)
class TruncatedPoissonSampler(_Base):
    """Poisson sampling, then a uniformly random subset of ``cap`` if the batch is larger.

    The batch size is ``min(Binomial(N, q), cap)``; given its size the batch is
    uniform.  This is the event dp-accounting calls
    ``TruncatedSubsampledGaussianDpEvent`` (accountable with PLD only).

    Args:
        cap: the maximum batch size, >= 1.
    """

    cap: int = 0

    name = "truncated_poisson"
    accounting = "truncated_poisson"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("cap", self.cap, minimum=1)

    def params(self) -> dict[str, Any]:
        return {"cap": int(self.cap)}

    def sample(self, step: int) -> np.ndarray:
        check_int("step", step, minimum=0)
        rng = step_rng(self.seed, step)
        size = min(int(rng.binomial(self.dataset_size, self.sampling_rate)), self.cap)
        return _sorted(rng.choice(self.dataset_size, size=size, replace=False, shuffle=False))


@dataclasses.dataclass(frozen=True)
class BallsInBinsSampler(_Base):
    """Each epoch, every example goes into one of ``round(1/q)`` random bins; one bin per step.

    Batch sizes are Binomial(N, 1/E) like Poisson's, but every example appears
    exactly once per epoch and batches within an epoch are disjoint.
    """

    name = "balls_in_bins"
    accounting = "balls_in_bins"

    @property
    def num_bins(self) -> int:
        return max(1, round(1.0 / self.sampling_rate))

    def params(self) -> dict[str, Any]:
        return {"num_bins": self.num_bins}

    def sample(self, step: int) -> np.ndarray:
        check_int("step", step, minimum=0)
        epoch, b = divmod(step, self.num_bins)
        order, starts = _bins(self.seed, epoch, self.dataset_size, self.num_bins)
        return _sorted(order[starts[b] : starts[b + 1]])


@dataclasses.dataclass(frozen=True)
class ShuffleBinomialSampler(_Base):
    """A shuffle cut into Binomial(N, q)-sized chunks (the last chunk of an epoch is shorter).

    Batch sizes look Poisson, but each example is used once per epoch and
    consecutive batches are disjoint within an epoch: shuffling in disguise.
    """

    name = "shuffle_binomial"
    accounting = "shuffle"

    def sample(self, step: int) -> np.ndarray:
        check_int("step", step, minimum=0)
        epoch, first = 0, 0
        while True:
            bounds = _chunk_bounds(self.seed, epoch, self.dataset_size, self.sampling_rate)
            chunks = bounds.size - 1
            if step < first + chunks:
                break
            first += chunks
            epoch += 1
            if epoch > 10 * (step + 1):  # pragma: no cover - impossible: chunks >= 1
                raise InvalidArgument(f"step={step} is unreachable")
        j = step - first
        perm = _permutation(self.seed, epoch, self.dataset_size)
        return _sorted(perm[bounds[j] : bounds[j + 1]])
