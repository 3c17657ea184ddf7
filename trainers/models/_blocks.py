"""Pre-LayerNorm transformer encoder block shared by the ViT and the text model.

Vaswani et al. 2017 ("Attention Is All You Need", arXiv:1706.03762) with the
pre-norm placement of Xiong et al. 2020 (arXiv:2002.04745).  LayerNorm
normalises each token of each example on its own, so the block never mixes
examples: per-example gradients stay per-example.  No dropout (it would need a
PRNG stream per step, and DP noise regularises already).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["EncoderBlock"]


class EncoderBlock(nn.Module):
    """``x + MHA(LN(x))`` then ``x + MLP(LN(x))`` with a GELU MLP.

    Attributes:
        num_heads: attention heads (must divide the token width).
        mlp_dim: hidden width of the MLP.
        dtype: computation dtype; ``None`` follows the inputs and parameters.
    """

    num_heads: int
    mlp_dim: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        """Apply the block to tokens ``x`` of shape ``(B, T, D)``.

        Args:
            x: token embeddings.
            mask: optional boolean attention mask broadcastable to
                ``(B, heads, T, T)``; ``False`` entries are not attended to.
        """
        width = x.shape[-1]
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, deterministic=True
        )(y, mask=mask)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.Dense(self.mlp_dim, dtype=self.dtype)(y)
        y = nn.gelu(y)
        y = nn.Dense(width, dtype=self.dtype)(y)
        return x + y
