"""Samplers by name: what the ledger header's ``sampler`` field refers to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpverify._validate import check_choice
from dpverify.errors import InvalidArgument
from dpverify.samplers._protocol import Sampler
from dpverify.samplers.cyclic import CyclicPoissonSampler
from dpverify.samplers.poisson import PoissonSampler
from dpverify.samplers.shortcuts import (
    BallsInBinsSampler,
    FixedSizeSampler,
    ShuffleBinomialSampler,
    ShuffleSampler,
    TruncatedPoissonSampler,
)

__all__ = ["SAMPLER_NAMES", "make_sampler"]

# Classes, not instances: their read-only properties do not match the
# Protocol's attribute declarations for the type checker, hence Callable[..., Any].
_FACTORIES: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "poisson": (PoissonSampler, ()),
    "shuffle": (ShuffleSampler, ("batch_size",)),
    "fixed_size": (FixedSizeSampler, ("batch_size",)),
    "truncated_poisson": (TruncatedPoissonSampler, ("cap",)),
    "balls_in_bins": (BallsInBinsSampler, ("num_bins",)),
    "shuffle_binomial": (ShuffleBinomialSampler, ()),
    "cyclic_poisson": (CyclicPoissonSampler, ("cycle_length",)),
}

#: Parameters passed to the sampler's constructor (the others are derived and checked).
_CONSTRUCTOR_PARAMS = {"truncated_poisson": ("cap",), "cyclic_poisson": ("cycle_length",)}

#: Names accepted by :func:`make_sampler` (and written to ``RunHeader.sampler``).
SAMPLER_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make_sampler(
    name: str, dataset_size: int, sampling_rate: float, seed: int, **params: Any
) -> Sampler:
    """Build the sampler called ``name``.

    Args:
        name: one of :data:`SAMPLER_NAMES`.
        dataset_size: N >= 1.
        sampling_rate: q in (0, 1]; fixed-size samplers use batches of round(qN).
        seed: the private sampling seed.
        **params: the sampler's parameters as recorded in ``RunHeader.sampler_params``
            (``cap`` for ``"truncated_poisson"``, ``cycle_length`` for
            ``"cyclic_poisson"``).  Derived parameters that a
            sampler reports in ``params()`` (``batch_size``, ``num_bins``) are
            accepted when they agree with ``dataset_size`` and ``sampling_rate``,
            so ``make_sampler(h.sampler, h.dataset_size, h.sampling_rate, seed,
            **h.sampler_params)`` rebuilds the sampler of a run.

    Raises:
        InvalidArgument: unknown name, unknown parameter or inconsistent value.
    """
    name = str(name).lower() if isinstance(name, str) else name
    check_choice("sampler", name, SAMPLER_NAMES)
    factory, accepted = _FACTORIES[name]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise InvalidArgument(
            f"sampler {name!r} has no parameter {unknown[0]!r} (allowed: {allowed})"
        )
    own = _CONSTRUCTOR_PARAMS.get(name, ())
    kwargs = {k: params[k] for k in own if k in params}
    sampler = factory(dataset_size, sampling_rate, seed, **kwargs)
    derived = sampler.params()
    for key, value in params.items():
        if key not in own and derived.get(key) != value:
            raise InvalidArgument(
                f"{key}={value!r} does not match dataset_size={dataset_size} and "
                f"sampling_rate={sampling_rate} (expected {derived.get(key)!r})"
            )
    return sampler
