"""Masked DP-SGD: Poisson-correct, fixed-shape, compiled once per run.

The step is split along its jobs:

* :mod:`trainers.dp_math` — the DP math (per-example gradients, clipping,
  masking, non-finite examples, the noise rule, the fixed denominator, the
  optimiser update, the update sketch) as pure traced functions, composed in
  a :class:`~trainers.dp_math.Mechanics` (``PRODUCTION`` is the correct one;
  :mod:`trainers.mutations` builds deliberately wrong ones);
* :mod:`trainers.dispatch` — the dispatch policy (:class:`MaskedDPSGD`: one
  compiled call per logical step, or k + 2 calls when L exceeds the fused
  buffer);
* :mod:`trainers.sharding` — device placement (data parallel over a 1-D mesh).

This module re-exports the public names of the first two, so
``from trainers.dpsgd import MaskedDPSGD, DPSGDConfig`` keeps working.

References: Abadi et al. 2016, "Deep Learning with Differential Privacy",
arXiv:1607.00133; Chua et al. 2024, "How Private are DP-SGD Implementations?".
"""

from __future__ import annotations

from trainers.dispatch import MaskedDPSGD as MaskedDPSGD
from trainers.dispatch import PendingStats as PendingStats
from trainers.dispatch import default_fused_batches as default_fused_batches
from trainers.dp_math import DPSGDConfig as DPSGDConfig
from trainers.dp_math import StepStats as StepStats
from trainers.dp_math import gaussian_noise as gaussian_noise
from trainers.dp_math import trainable_leaves as trainable_leaves

__all__ = [
    "DPSGDConfig",
    "MaskedDPSGD",
    "PendingStats",
    "StepStats",
    "default_fused_batches",
    "gaussian_noise",
    "trainable_leaves",
]
