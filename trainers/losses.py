"""Per-example losses for the DP-SGD trainers.

A loss function maps ``(logits, labels)`` for a batch to one loss value per
example, shape ``(batch,)``.  DP-SGD differentiates each example's loss on its
own; the mean loss over the *real* examples of a logical batch is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["LOSSES", "LossFn", "get_loss", "softmax_cross_entropy"]

#: ``loss(logits, labels) -> per-example losses``.
LossFn = Callable[[Any, Any], Any]


def softmax_cross_entropy(logits: Any, labels: Any) -> Any:
    """Cross entropy of integer ``labels`` under softmax(``logits``), per example.

    ``-log softmax(logits)[label] = logsumexp(logits) - logits[label]``, computed
    in the logits' dtype (the trainers pass float32 or float64 logits).
    """
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    labels = jnp.asarray(labels)
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return logsumexp(logits, axis=-1) - picked


#: Loss name → function.
LOSSES: dict[str, LossFn] = {"softmax_cross_entropy": softmax_cross_entropy}


def get_loss(name: str) -> LossFn:
    """The loss called ``name``."""
    from dpverify._validate import check_choice

    return LOSSES[check_choice("loss", name, tuple(LOSSES))]
