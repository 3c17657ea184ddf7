"""Models (Flax linen): inputs are batched, outputs are logits.

Every model is batch-independent (no BatchNorm, no dropout): the logits of an
example depend on that example only, as per-example DP-SGD gradients require.
"""

from trainers.models.cnn import CNN as CNN
from trainers.models.mlp import MLP as MLP
from trainers.models.text_transformer import PAD_ID as PAD_ID
from trainers.models.text_transformer import TextTransformer as TextTransformer
from trainers.models.vit import VIT_SMALL as VIT_SMALL
from trainers.models.vit import VIT_TINY as VIT_TINY
from trainers.models.vit import ViT as ViT
