"""A multi-layer perceptron classifier."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["MLP"]


class MLP(nn.Module):
    """Flatten, then Dense → tanh layers, then a Dense classifier head.

    tanh (bounded, smooth) is the usual choice for DP-SGD: Papernot et al. 2021,
    "Tempered Sigmoid Activations for Deep Learning with Differential Privacy".
    """

    num_classes: int
    hidden: Sequence[int] = (64,)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = jnp.tanh(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)
