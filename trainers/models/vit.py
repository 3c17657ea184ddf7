"""A small Vision Transformer classifier.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (arXiv:2010.11929):
non-overlapping ``patch×patch`` patches are linearly embedded, a learned
position embedding is added, pre-norm encoder blocks follow, then a final
LayerNorm, mean pooling over tokens (instead of a class token, as in Zhai et
al. 2022 "Scaling Vision Transformers") and a Dense head.

The ViT-Small-like configuration of the throughput benchmark
(benchmarks/throughput.py) is ``ViT(num_classes=10, patch_size=4, width=384, depth=6, num_heads=6,
mlp_dim=1536)`` on 32×32 inputs; :data:`VIT_SMALL` holds it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from trainers.models._blocks import EncoderBlock
from trainers.models._common import check_divisible

__all__ = ["VIT_SMALL", "VIT_TINY", "ViT"]


class ViT(nn.Module):
    """Patch embedding → encoder blocks → LayerNorm → mean pool → Dense.

    Attributes:
        num_classes: number of logits.
        patch_size: side of the square patches; must divide height and width.
        width: token width D (a multiple of ``num_heads``).
        depth: number of encoder blocks.
        num_heads: attention heads per block.
        mlp_dim: hidden width of each block's MLP.
        dtype: computation dtype; ``None`` (default) follows the inputs and
            parameters, so casting both to bfloat16 computes in bfloat16.
            Parameters are created float32 either way.

    Inputs are NHWC images ``(B, H, W, C)`` or greyscale ``(B, H, W)``;
    ``apply({"params": p}, x)`` returns logits ``(B, num_classes)``.  The
    position embedding's shape is fixed at initialisation by the input size.
    """

    num_classes: int
    patch_size: int = 2
    width: int = 32
    depth: int = 2
    num_heads: int = 2
    mlp_dim: int = 64
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        check_divisible("width", self.width, "num_heads", self.num_heads)
        if x.ndim == 3:
            x = x[..., None]
        batch, height, width_px, _ = x.shape
        check_divisible("image height", height, "patch_size", self.patch_size)
        check_divisible("image width", width_px, "patch_size", self.patch_size)
        p = self.patch_size
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = nn.Conv(
            self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="embed"
        )(x)
        x = x.reshape((batch, -1, self.width))
        pos = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), (1, x.shape[1], self.width)
        )
        x = x + pos.astype(x.dtype)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"block{i}")(x)
        x = nn.LayerNorm(dtype=self.dtype)(x)
        x = jnp.mean(x, axis=1)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


#: Keyword arguments of a tiny ViT for CPU tests and digits.
VIT_TINY: dict[str, int] = {"patch_size": 2, "width": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64}

#: Keyword arguments of the ViT-Small-like benchmark model (32×32 input).
VIT_SMALL: dict[str, int] = {
    "patch_size": 4,
    "width": 384,
    "depth": 6,
    "num_heads": 6,
    "mlp_dim": 1536,
}
