"""Reference DP-SGD: the obviously-correct, slow oracle the auditor replays.

For a logical step t with sampled indices B_t the reference computes, in
float64, one example at a time (a plain Python loop, no padding, no mask, no
``vmap``):

    g_i  = ∇_θ ℓ(f_θ(x_i), y_i)                      (trainable leaves only)
    ĝ_i  = g_i · min(1, C / ‖g_i‖₂)
    ḡ    = (Σ_{i∈B_t} ĝ_i + σ·C·z_t) / D

where z_t is the *same* float32 standard normal draw as the masked trainer's
(:func:`trainers.dpsgd.gaussian_noise` of the run's noise key and t), cast to
float64, and D is the fixed denominator.  :func:`reference_step` then applies
the Optax optimiser in float64.  Comparing ḡ's update sketch with the one in
the ledger checks the masked trainer's whole step (ARCHITECTURE.md §7).

References: Abadi et al. 2016, arXiv:1607.00133, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_positive
from trainers.dpsgd import gaussian_noise, trainable_leaves
from trainers.losses import LossFn, softmax_cross_entropy
from trainers.sketch import DEFAULT_SKETCH_DIM, update_sketch

__all__ = ["ReferenceGradient", "reference_noisy_gradient", "reference_step"]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ReferenceGradient:
    """The reference computation of one logical step.

    Attributes:
        gradient: float64 NumPy pytree ḡ, the noisy averaged gradient (zero on
            frozen leaves) — what the optimiser receives.
        clipped_sum: float64 pytree Σ ĝ_i before noise.
        batch_size: L.
        num_clipped: examples with ‖g_i‖ > C.
        max_grad_norm: max ‖g_i‖ (0.0 when L = 0).
        max_clipped_norm: max ‖ĝ_i‖.
        loss: mean loss over the batch (NaN when L = 0).
        noise_std: σ·C.
        denominator: D.
        update_sketch: :func:`trainers.sketch.update_sketch` of ``gradient``.
    """

    gradient: Any
    clipped_sum: Any
    batch_size: int
    num_clipped: int
    max_grad_norm: float
    max_clipped_norm: float
    loss: float
    noise_std: float
    denominator: float
    update_sketch: tuple[float, ...]


def _to_float64(tree: Any) -> Any:
    import jax

    def conv(a):
        a = np.asarray(a)
        return a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree_util.tree_map(conv, tree)


@functools.lru_cache(maxsize=16)
def _example_value_and_grad(model_apply: Any, loss_fn: Any) -> Any:
    """Jitted ``(loss, grad)`` of ONE example's loss (cached: replay calls it per step)."""
    import jax

    def example_loss(p, xi, yi):
        return loss_fn(model_apply(p, xi[None]), yi[None])[0]

    return jax.jit(jax.value_and_grad(example_loss))


def reference_noisy_gradient(
    model_apply: Any,
    params: Any,
    x: Any,
    y: Any,
    indices: Any,
    *,
    clip_norm: float,
    noise_multiplier: float,
    denominator: float,
    noise_key: Any,
    step: int,
    frozen: Any = None,
    loss_fn: LossFn = softmax_cross_entropy,
    sketch_dim: int = DEFAULT_SKETCH_DIM,
) -> ReferenceGradient:
    """Recompute step ``step``'s noisy averaged gradient the slow, plain way.

    Args:
        model_apply: ``model_apply(params, x) -> logits`` (as for the masked trainer).
        params: parameters before the step (any float dtype; used in float64).
        x, y: all N training inputs and labels.
        indices: the step's sampled indices, as recorded in the ledger.
        clip_norm: C.
        noise_multiplier: σ.
        denominator: D (q·N).
        noise_key: the run's noise key.
        step: logical step index t.
        frozen: frozen-parameter selector (see :func:`trainers.dpsgd.trainable_leaves`).
        loss_fn: per-example loss.
        sketch_dim: k of the update sketch.

    Returns:
        :class:`ReferenceGradient`.
    """
    import jax
    import jax.numpy as jnp

    C = check_positive("clip_norm", clip_norm)
    sigma = check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    D = check_positive("denominator", denominator)
    t = check_int("step", step, minimum=0)
    idx = np.asarray(indices, dtype=np.int64).ravel()
    trainable = trainable_leaves(params, frozen)
    # The masked trainer's float32 draws, reproduced bit for bit outside x64 mode.
    noise = [
        np.asarray(z, np.float64)
        for z in jax.tree_util.tree_leaves(gaussian_noise(noise_key, np.uint32(t), params))
    ]
    x_np, y_np = np.asarray(x), np.asarray(y)

    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        p64 = _to_float64(params)
        treedef = jax.tree_util.tree_structure(p64)

        value_and_grad = _example_value_and_grad(model_apply, loss_fn)
        total = [np.zeros(np.shape(a), np.float64) for a in jax.tree_util.tree_leaves(p64)]
        losses, num_clipped, max_norm, max_clipped = [], 0, 0.0, 0.0
        for i in idx:
            xi = x_np[i]
            xi = xi.astype(np.float64) if np.issubdtype(xi.dtype, np.floating) else xi
            loss, g = value_and_grad(p64, jnp.asarray(xi), jnp.asarray(y_np[i]))
            g = [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(g)]
            norm = math.sqrt(
                sum(float(np.sum(a * a)) for a, tr in zip(g, trainable, strict=True) if tr)
            )
            factor = min(1.0, C / norm) if norm > 0 else 1.0
            if math.isnan(norm):
                factor = math.nan
            num_clipped += int(norm > C)
            max_norm = max(max_norm, norm) if not math.isnan(norm) else math.nan
            max_clipped = max(max_clipped, norm * factor) if not math.isnan(norm) else math.nan
            losses.append(float(loss))
            for k, (a, tr) in enumerate(zip(g, trainable, strict=True)):
                if tr:
                    total[k] += a * factor

    grad = [
        (s + sigma * C * z) / D if tr else np.zeros_like(s)
        for s, z, tr in zip(total, noise, trainable, strict=True)
    ]
    grad_tree = jax.tree_util.tree_unflatten(treedef, grad)
    return ReferenceGradient(
        gradient=grad_tree,
        clipped_sum=jax.tree_util.tree_unflatten(treedef, total),
        batch_size=int(idx.size),
        num_clipped=num_clipped,
        max_grad_norm=max_norm,
        max_clipped_norm=max_clipped,
        loss=float(np.mean(losses)) if losses else math.nan,
        noise_std=sigma * C,
        denominator=D,
        update_sketch=update_sketch(grad_tree, k=sketch_dim),
    )


def reference_step(
    model_apply: Any,
    optimizer: Any,
    params: Any,
    opt_state: Any,
    x: Any,
    y: Any,
    indices: Any,
    **kwargs: Any,
) -> tuple[Any, Any, ReferenceGradient]:
    """:func:`reference_noisy_gradient`, then the Optax update, all in float64.

    Keyword arguments are those of :func:`reference_noisy_gradient`.  Frozen
    leaves are not updated.

    Returns:
        ``(new_params, new_opt_state, ReferenceGradient)``; parameters and
        optimiser state as float64 NumPy pytrees.
    """
    import jax
    import optax

    ref = reference_noisy_gradient(model_apply, params, x, y, indices, **kwargs)
    trainable = trainable_leaves(params, kwargs.get("frozen"))
    with jax.enable_x64(True):
        p64 = _to_float64(params)
        updates, new_state = optimizer.update(ref.gradient, _to_float64(opt_state), p64)
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        leaves = [
            np.asarray(u) if tr else np.zeros_like(np.asarray(u))
            for u, tr in zip(leaves, trainable, strict=True)
        ]
        new_params = optax.apply_updates(p64, jax.tree_util.tree_unflatten(treedef, leaves))
        new_params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), new_params)
        new_state = jax.tree_util.tree_map(np.asarray, new_state)
    return new_params, new_state, ref
