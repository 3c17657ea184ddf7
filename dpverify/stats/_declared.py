"""The null hypothesis a run declares: its sampler, with the parameters the ledger header records.

Every declared sampler with an ε bound is tested against its own null:

* ``poisson`` — each example independently with probability q at every step;
* ``truncated_poisson`` — the same, then a uniform subset of ``cap`` if larger
  (``min(Binomial(N, q), cap)`` sizes);
* ``fixed_size`` — exactly ``batch_size`` examples, a uniform subset, drawn
  independently at every step (inclusion counts ``Binomial(T, B/N)``);
* ``cyclic_poisson`` — the examples are split once, secretly, into
  ``b = cycle_length`` groups of ``G = N // b`` (the remaining ``N mod b`` are
  never used); step t samples group ``t mod b`` only, each member with
  probability ``b·q`` (the header's q is the overall rate).  This is
  jax_privacy's ``CyclicPoissonSampling`` with its default equal-split
  partition (Choquette-Choo et al. 2023, arXiv:2306.08153).

Poisson is cyclic Poisson with ``b = 1``: every test is written for groups.
"""

from __future__ import annotations

import dataclasses

from dpverify._validate import check_choice, check_int, check_probability
from dpverify.errors import InvalidArgument
from dpverify.stats._nulls import SizeLaw

__all__ = ["NULL_SAMPLERS", "DeclaredNull"]

#: Declared samplers the battery has a null for.
NULL_SAMPLERS = ("poisson", "truncated_poisson", "fixed_size", "cyclic_poisson")

#: Relative slack for rates equal up to float32 rounding (2^-23).
FLOAT32_REL = 2.0**-23


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeclaredNull:
    """A declared sampler and its parameters.

    Args:
        dataset_size: N.
        sampling_rate: q, the overall per-step inclusion rate (expected batch q·N).
        sampler: one of :data:`NULL_SAMPLERS`.
        cap: the cap of ``truncated_poisson``.
        batch_size: the batch size of ``fixed_size`` (default ``max(1, round(qN))``).
        cycle_length: b of ``cyclic_poisson`` (1 otherwise).
    """

    dataset_size: int
    sampling_rate: float
    sampler: str = "poisson"
    cap: int | None = None
    batch_size: int | None = None
    cycle_length: int = 1

    def __post_init__(self) -> None:
        n = check_int("dataset_size", self.dataset_size, minimum=1)
        q = check_probability("sampling_rate", self.sampling_rate)
        check_choice("sampler", self.sampler, NULL_SAMPLERS)
        b = check_int("cycle_length", self.cycle_length, minimum=1)
        if self.sampler == "truncated_poisson":
            if self.cap is None:
                raise InvalidArgument("truncated_poisson needs cap >= 1")
            check_int("cap", self.cap, minimum=1)
        if self.sampler == "cyclic_poisson":
            if b > n:
                raise InvalidArgument(f"cycle_length={b} must be at most dataset_size={n}")
            if b * q > 1.0 + FLOAT32_REL:
                raise InvalidArgument(
                    f"cycle_length={b} times sampling_rate={q:g} must be at most 1 "
                    "(the rate within the active group)"
                )
        elif b != 1:
            raise InvalidArgument(f"cycle_length={b} is only for cyclic_poisson")
        if self.sampler == "fixed_size":
            size = self.batch_size if self.batch_size is not None else max(1, min(n, round(q * n)))
            object.__setattr__(self, "batch_size", check_int("batch_size", size, minimum=0))
            if size > n:
                raise InvalidArgument(f"batch_size={size} must be at most dataset_size={n}")

    @property
    def group_size(self) -> int:
        """G: examples eligible at a step (N, or N // b for cyclic Poisson)."""
        return self.dataset_size // self.cycle_length

    @property
    def within_rate(self) -> float:
        """Inclusion probability of an eligible example at a step (b·q)."""
        return min(1.0, self.cycle_length * self.sampling_rate)

    @property
    def random_sizes(self) -> bool:
        return self.sampler != "fixed_size"

    def size_law(self, rate: float | None = None) -> SizeLaw:
        """Law of one batch size, at the declared within-group rate or at ``rate``."""
        if self.sampler == "fixed_size":
            return SizeLaw(
                dataset_size=self.dataset_size,
                sampling_rate=self.sampling_rate,
                fixed_size=self.batch_size,
            )
        return SizeLaw(
            dataset_size=self.group_size,
            sampling_rate=self.within_rate if rate is None else rate,
            cap=self.cap,
        )

    def label(self) -> str:
        names = {
            "poisson": "Poisson",
            "truncated_poisson": f"truncated Poisson (cap {self.cap})",
            "fixed_size": f"fixed-size ({self.batch_size}) without replacement",
            "cyclic_poisson": f"cyclic Poisson ({self.cycle_length} groups)",
        }
        return names[self.sampler]
