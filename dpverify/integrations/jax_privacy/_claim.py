"""The claimed ε from jax_privacy's own accountant, for the steps actually executed."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["jax_privacy_epsilon"]


def jax_privacy_epsilon(
    strategy: Any, *, num_examples: int, steps: int, noise_multiplier: float, delta: float,
    accountant: str = "pld",
) -> tuple[float | None, str]:  # fmt: skip
    """ε at ``delta`` after ``steps`` steps, per ``DpsgdTrainingAccountant``.

    Returns:
        ``(epsilon, accountant name)``; ``(None, why)`` for strategies jax_privacy
        has no accountant for (balls-in-bins, b-min-sep).
    """
    from jax_privacy import accounting as acc
    from jax_privacy import batch_selection as bs

    config = acc.PldAccountantConfig() if accountant == "pld" else acc.RdpAccountantConfig()
    name = f"jax_privacy-{accountant}"
    if steps == 0:
        return 0.0, name
    kw: dict[str, Any] = {}
    if isinstance(strategy, bs.CyclicPoissonSampling):
        b = int(strategy.cycle_length)
        # jax_privacy's q is batch_size / (N // cycle_length) with an integer batch_size;
        # rounding up keeps the claim an upper bound at the strategy's exact rate.
        size = math.ceil(strategy.sampling_prob * (num_examples // b) - 1e-9)
        kw = dict(batch_size=size, cycle_length=b,
                  truncated_batch_size=strategy.truncated_batch_size,
                  sampling_method=acc.SamplingMethod.POISSON)  # fmt: skip
    elif isinstance(strategy, bs.FixedBatchSampling):
        kw = dict(batch_size=strategy.batch_size,
                  sampling_method=acc.SamplingMethod.FIXED_BATCH_SIZE)  # fmt: skip
    else:
        return None, f"jax_privacy has no accountant for {type(strategy).__name__}"
    params = acc.DpParams(noise_multipliers=noise_multiplier, num_samples=num_examples,
                          delta=delta, **kw)  # fmt: skip
    eps = acc.DpsgdTrainingAccountant(config).compute_epsilon(steps, params)
    return (float(eps) if math.isfinite(eps) else None), name
