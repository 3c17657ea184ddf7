"""A small transformer encoder for text classification.

Token ids (0 is padding) are embedded, a learned position embedding is added,
pre-norm encoder blocks attend only to non-padding tokens, and the final
LayerNorm's outputs are mean-pooled over non-padding tokens into a Dense head
(Vaswani et al. 2017, arXiv:1706.03762; mean pooling as in Reimers & Gurevych
2019, arXiv:1908.10084).

Padding never influences a real token: attention keys at padding positions are
masked out and padding positions are excluded from the pooled mean.  A text
made only of padding pools to zeros (no division by zero).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from trainers.models._blocks import EncoderBlock
from trainers.models._common import check_divisible

__all__ = ["PAD_ID", "TextTransformer"]

#: Token id reserved for padding.
PAD_ID = 0


class TextTransformer(nn.Module):
    """Embedding → encoder blocks (padding-masked) → LayerNorm → masked mean → Dense.

    Attributes:
        num_classes: number of logits.
        vocab_size: number of token ids (ids must lie in ``[0, vocab_size)``;
            JAX clamps out-of-range gathers silently, so loaders check it).
        width: token width D (a multiple of ``num_heads``).
        depth: number of encoder blocks.
        num_heads: attention heads per block.
        mlp_dim: hidden width of each block's MLP.
        dtype: computation dtype; ``None`` (default) follows the inputs and
            parameters, so casting both to bfloat16 computes in bfloat16.
            Parameters are created float32 either way.

    Inputs are integer token ids ``(B, L)``; ``apply({"params": p}, x)``
    returns logits ``(B, num_classes)``.  The position embedding's length is
    fixed at initialisation by ``L``.
    """

    num_classes: int
    vocab_size: int
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    dtype: Any = None

    @nn.compact
    def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
        check_divisible("width", self.width, "num_heads", self.num_heads)
        tokens = tokens.astype(jnp.int32)
        keep = tokens != PAD_ID  # (B, L)
        x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name="embed")(tokens)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), (1, tokens.shape[1], self.width)
        )
        x = x + pos.astype(x.dtype)
        mask = nn.make_attention_mask(keep, keep)  # (B, 1, L, L)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"block{i}")(
                x, mask=mask
            )
        x = nn.LayerNorm(dtype=self.dtype)(x)
        count = jnp.maximum(jnp.sum(keep, axis=1, keepdims=True), 1).astype(x.dtype)
        pooled = jnp.sum(jnp.where(keep[..., None], x, 0.0), axis=1) / count
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled).astype(jnp.float32)
