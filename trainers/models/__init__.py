"""Models (Flax linen): inputs are batched, outputs are logits."""

from trainers.models.mlp import MLP as MLP
