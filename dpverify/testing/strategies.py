"""Hypothesis strategies for sampler configurations.

Hypothesis is imported when a strategy is built, not when this module is
imported, so ``import dpverify.testing`` works without it installed.

Example (in a user's test module; ``MySampler(dataset_size, sampling_rate, seed)``)::

    from hypothesis import given, settings
    from dpverify.testing import sampler_configs

    @settings(max_examples=5, deadline=None)
    @given(sampler_configs(max_dataset_size=500, max_steps=20))
    def test_batches_are_sorted(config):
        batch = config.build(MySampler).sample(config.steps - 1)
        assert (batch[1:] > batch[:-1]).all()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from dpverify._validate import check_int, check_probability
from dpverify.errors import InvalidArgument

__all__ = ["SamplerConfig", "dataset_sizes", "sampler_configs", "sampling_rates", "seeds"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """One sampler configuration: N, q, number of steps T and the seed.

    Attributes:
        dataset_size: N >= 1.
        sampling_rate: q in (0, 1].
        steps: T >= 1, the number of steps to draw.
        seed: the sampler's seed (>= 0).
    """

    dataset_size: int
    sampling_rate: float
    steps: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("dataset_size", self.dataset_size, minimum=1)
        check_probability("sampling_rate", self.sampling_rate)
        check_int("steps", self.steps, minimum=1)
        check_int("seed", self.seed, minimum=0)

    @property
    def expected_batch_size(self) -> float:
        return self.dataset_size * self.sampling_rate

    def build(self, factory: Callable[..., Any]) -> Any:
        """``factory(dataset_size, sampling_rate, seed)``: the sampler under this configuration."""
        return factory(self.dataset_size, self.sampling_rate, self.seed)


def _hypothesis() -> Any:
    try:
        from hypothesis import strategies
    except ImportError:  # the [testing] extra installs it
        raise ImportError(
            "dpverify.testing's strategies need Hypothesis: pip install 'dpverify[testing]'"
        ) from None
    return strategies


def dataset_sizes(min_value: int = 1, max_value: int = 100_000) -> Any:
    """Strategy for N in ``[min_value, max_value]``, biased towards small sizes."""
    check_int("min_value", min_value, minimum=1)
    check_int("max_value", max_value, minimum=min_value)
    return _hypothesis().integers(min_value, max_value)


def sampling_rates(min_value: float = 1e-4, max_value: float = 1.0) -> Any:
    """Strategy for q in ``[min_value, max_value]`` ⊂ (0, 1], log-uniformish plus the edges."""
    check_probability("min_value", min_value)
    check_probability("max_value", max_value)
    if min_value > max_value:
        raise InvalidArgument(f"min_value={min_value!r} must be <= max_value={max_value!r}")
    st = _hypothesis()
    return st.one_of(
        st.sampled_from(sorted({min_value, max_value})),
        st.floats(min_value, max_value, allow_nan=False, allow_infinity=False),
    )


def seeds() -> Any:
    """Strategy for sampler seeds (non-negative 63-bit integers)."""
    return _hypothesis().integers(0, 2**63 - 1)


def sampler_configs(
    *,
    min_dataset_size: int = 1,
    max_dataset_size: int = 10_000,
    min_sampling_rate: float = 1e-3,
    max_sampling_rate: float = 1.0,
    min_steps: int = 1,
    max_steps: int = 200,
    max_indices: int | None = None,
) -> Any:
    """Strategy for :class:`SamplerConfig` values.

    Args:
        min_dataset_size, max_dataset_size: range of N.
        min_sampling_rate, max_sampling_rate: range of q.
        min_steps, max_steps: range of T.
        max_indices: if given, only configurations whose expected number of
            recorded indices ``N q T`` is at most this (keeps tests fast).

    Raises:
        InvalidArgument: an empty or invalid range (checked eagerly).
    """
    check_int("min_dataset_size", min_dataset_size, minimum=1)
    check_int("max_dataset_size", max_dataset_size, minimum=min_dataset_size)
    check_int("min_steps", min_steps, minimum=1)
    check_int("max_steps", max_steps, minimum=min_steps)
    if max_indices is not None:
        check_int("max_indices", max_indices, minimum=1)
        if min_dataset_size * min_sampling_rate * min_steps > max_indices:
            raise InvalidArgument(
                f"max_indices={max_indices} is below the smallest configuration's expected size"
            )
    st = _hypothesis()
    strategy = st.builds(
        SamplerConfig,
        dataset_size=dataset_sizes(min_dataset_size, max_dataset_size),
        sampling_rate=sampling_rates(min_sampling_rate, max_sampling_rate),
        steps=st.integers(min_steps, max_steps),
        seed=seeds(),
    )
    if max_indices is not None:
        strategy = strategy.filter(
            lambda c: c.dataset_size * c.sampling_rate * c.steps <= max_indices
        )
    return strategy
