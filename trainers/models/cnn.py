"""A small convolutional classifier with GroupNorm (batch-independent).

DP-SGD needs per-example gradients, so no layer may mix examples: BatchNorm is
out, GroupNorm (Wu & He 2018, arXiv:1803.08494) normalises each example over
groups of its own channels and positions.  GroupNorm is the usual choice for
DP image models (De et al. 2022, "Unlocking High-Accuracy Differentially
Private Image Classification through Scale", arXiv:2204.13650).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from trainers.models._common import activation, check_divisible

__all__ = ["CNN"]


class CNN(nn.Module):
    """Stages of ``Conv 3×3 → GroupNorm → activation → 2×2 average pool``.

    After the last stage, global average pooling over positions (or, with
    ``global_pool=False``, flattening, which keeps where features are: better
    for tiny inputs such as 8×8 digits) and a Dense classifier head.  Each
    2×2 pool halves the spatial size (rounding up: ``SAME`` padding keeps at
    least one position).

    Attributes:
        num_classes: number of logits.
        channels: output channels of each stage.
        groups: GroupNorm groups per stage, capped at the stage's channel
            count, which it must then divide.
        global_pool: average over positions before the head (default), or
            flatten (the head's size then depends on the input size).
        activation: ``"tanh"`` (default, Papernot et al. 2021 "Tempered
            Sigmoid Activations"), ``"relu"``, ``"gelu"`` or ``"elu"``.
        dtype: computation dtype; ``None`` (default) follows the inputs and
            parameters, so casting both to bfloat16 computes in bfloat16.
            Parameters are created float32 either way.

    Inputs are NHWC images ``(B, H, W, C)`` or greyscale ``(B, H, W)``;
    ``apply({"params": p}, x)`` returns logits ``(B, num_classes)``.
    """

    num_classes: int
    channels: Sequence[int] = (16, 32)
    groups: int = 4
    global_pool: bool = True
    activation: str = "tanh"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = activation(self.activation)
        if x.ndim == 3:
            x = x[..., None]
        if self.dtype is not None:
            x = x.astype(self.dtype)
        for width in self.channels:
            groups = min(self.groups, width)
            check_divisible("channels", width, "groups", groups)
            x = nn.Conv(width, (3, 3), padding="SAME", dtype=self.dtype)(x)
            x = nn.GroupNorm(num_groups=groups, dtype=self.dtype)(x)
            x = act(x)
            x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        if self.global_pool:
            x = jnp.mean(x, axis=(1, 2))
        else:
            x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
