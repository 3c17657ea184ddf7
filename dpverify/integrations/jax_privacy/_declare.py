"""A jax_privacy ``BatchSelectionStrategy`` translated into dpverify's sampler terms.

| jax_privacy strategy | dpverify sampler | q (overall rate) | params |
|---|---|---|---|
| ``CyclicPoissonSampling(p)`` | ``poisson`` | p | — |
| ``CyclicPoissonSampling(p, truncated_batch_size=k)`` | ``truncated_poisson`` | p | ``cap`` = k |
| ``CyclicPoissonSampling(p, cycle_length=b)`` | ``cyclic_poisson`` | p / b | ``cycle_length`` = b |
| ``BallsInBinsSampling(cycle_length=b)`` | ``balls_in_bins`` | 1 / b | ``num_bins`` = b |
| ``FixedBatchSampling(B)`` | ``fixed_size`` | B / N | ``batch_size`` = B |
| ``BMinSepSampling(p, min_sep=b)`` | ``b_min_sep`` (refused until registered) | 1/(b−1+1/p) | ``min_sep``, ``sampling_prob`` |

``cyclic_poisson``'s q is the overall rate (expected batch q·N); within the
active group each example is included with probability b·q = p.
jax_privacy's balls-in-bins draws each example's bin once for the whole run
(dpverify's own ``balls_in_bins`` sampler re-bins every epoch; both use every
example once per cycle of b steps, and neither has an ε upper bound in the
accountant libraries: such runs audit as unverifiable).  b-min-sep has no
sampler, null or accountant in dpverify: it is refused (an unknown sampler
would be refuted by the configuration check) until ``b_min_sep`` is in
:data:`dpverify.samplers.SAMPLER_NAMES`.

Refused (:class:`~dpverify.integrations.UnsupportedRun`): truncated *cyclic*
Poisson, cyclic Poisson with ``partition_type=INDEPENDENT`` (groups of random,
Multinomial(N, 1/b), sizes: the ``cyclic_poisson`` null has b equal groups of
⌊N/b⌋, and the spread of the group sizes would be read as extra batch-size
variance and refute an honest run), truncated b-min-sep, ``FixedBatchSampling(replace=True)`` (an example
can appear twice in a batch; the ledger records sets), user-level selection
(``UserSelectionStrategy``) and strategies it does not know.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dpverify.integrations._errors import UnsupportedRun

__all__ = ["Declaration", "declare"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Declaration:
    """The header fields a strategy determines.

    Attributes:
        sampler: dpverify sampler name.
        sampler_params: its parameters.
        sampling_rate: overall per-step inclusion rate q.
        expected_batch_size: q·N (B for fixed batches).
        neighbouring: the relation jax_privacy's accounting assumes for it.
        strategy: jax_privacy's own description (class name and fields).
    """

    sampler: str
    sampler_params: dict[str, Any]
    sampling_rate: float
    expected_batch_size: float
    neighbouring: str
    strategy: dict[str, Any]


def declare(strategy: Any, num_examples: int) -> Declaration:
    """Translate ``strategy`` (for ``num_examples`` examples) or raise :class:`UnsupportedRun`."""
    from jax_privacy import batch_selection as bs

    n = int(num_examples)
    desc = {"class": type(strategy).__name__}
    for f in dataclasses.fields(strategy) if dataclasses.is_dataclass(strategy) else ():
        value = getattr(strategy, f.name)
        desc[f.name] = value.name if hasattr(value, "name") else value

    def out(sampler, params, q, neighbouring="add_remove", expected=None):
        if not 0.0 < q <= 1.0:
            raise UnsupportedRun(f"{desc['class']}: sampling rate q={q!r} is not in (0, 1]")
        return Declaration(sampler=sampler, sampler_params=params, sampling_rate=float(q),
                           expected_batch_size=float(expected if expected is not None else q * n),
                           neighbouring=neighbouring, strategy=desc)  # fmt: skip

    if isinstance(strategy, bs.UserSelectionStrategy):
        raise UnsupportedRun("user-level batch selection (UserSelectionStrategy) is not supported")
    if isinstance(strategy, bs.CyclicPoissonSampling):
        p, b, cap = strategy.sampling_prob, int(strategy.cycle_length), strategy.truncated_batch_size
        if b > 1 and cap is not None:
            raise UnsupportedRun(
                "truncated cyclic Poisson sampling has no dpverify sampler (use "
                "truncated_batch_size=None or cycle_length=1)"
            )
        partition = getattr(strategy, "partition_type", None)
        if b > 1 and partition is not None and partition.name != "EQUAL_SPLIT":
            # dpverify's cyclic_poisson null has b groups of exactly N // b; INDEPENDENT
            # groups have Multinomial(N, 1/b) sizes, whose spread the battery would
            # read as extra batch-size variance and refute.
            raise UnsupportedRun(
                f"cyclic Poisson sampling with partition_type={partition.name} has random group "
                "sizes; dpverify's cyclic_poisson null needs equal groups (use "
                "partition_type=EQUAL_SPLIT)"
            )
        if b > 1:
            return out("cyclic_poisson", {"cycle_length": b}, p / b)
        if cap is not None:
            return out("truncated_poisson", {"cap": int(cap)}, p)
        return out("poisson", {}, p)
    if isinstance(strategy, bs.BallsInBinsSampling):
        b = int(strategy.cycle_length)
        return out("balls_in_bins", {"num_bins": b}, 1.0 / b)
    if isinstance(strategy, bs.FixedBatchSampling):
        if strategy.replace:
            raise UnsupportedRun(
                "FixedBatchSampling(replace=True) can put an example twice in one batch; "
                "use replace=False"
            )
        size = int(strategy.batch_size)
        # jax_privacy accounts fixed batches under replace-one adjacency (SamplingMethod.FIXED_BATCH_SIZE).
        return out("fixed_size", {"batch_size": size}, size / n, "replace_one", size)
    if isinstance(strategy, bs.BMinSepSampling):
        from dpverify.samplers import SAMPLER_NAMES

        if "b_min_sep" not in SAMPLER_NAMES:
            raise UnsupportedRun(
                "b-min-sep sampling (BMinSepSampling) has no sampler, null or accountant in "
                "dpverify yet, so its claim cannot be audited; use CyclicPoissonSampling"
            )
        if strategy.truncated_batch_size is not None:
            raise UnsupportedRun("truncated b-min-sep sampling is not supported")
        p, b = float(strategy.sampling_prob), int(strategy.min_sep)
        expected = n / (b - 1 + 1 / p) if p > 0 else 0.0
        return out("b_min_sep", {"min_sep": b, "sampling_prob": p}, expected / n, expected=expected)
    raise UnsupportedRun(f"batch selection strategy {desc['class']} is not known to the recorder")
