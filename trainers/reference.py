"""Reference DP-SGD: the obviously-correct, slow oracle the auditor replays.

For a logical step t with sampled indices B_t the reference computes, in
float64, one example at a time (a plain Python loop, no padding, no mask, no
``vmap``):

    g_i  = ∇_θ ℓ(f_θ(x_i), y_i)                      (trainable leaves only)
    ĝ_i  = g_i · min(1, C / ‖g_i‖₂)
    ḡ    = (Σ_{i∈B_t} ĝ_i + σ·C·z_t) / D

where z_t is the run's noise for step t (:func:`reference_noise`), cast to
float64, and D is the fixed denominator.  A real example whose loss or
gradient is not finite gets factor 0 (it contributes exactly zero and is
counted in ``num_nonfinite``).  :func:`reference_step` then applies the Optax
optimiser in float64; the replay of a checkpoint segment
(:mod:`trainers.replay`) chains it over every step and compares the result
with the released parameters.

The oracle shares no code with the masked trainer (:mod:`trainers.dp_math`,
:mod:`trainers.dispatch`, :mod:`trainers.mutations`, ...; a test enforces
it): it writes its own noise rule, clipping, masking of frozen leaves and
denominator.  Only the model function, the loss and the optimiser (library
code) are shared.  The noise rule, stated once here and pinned by
known-answer tests:

* key derivation: ``key_t = jax.random.fold_in(K, t)``, K the run's noise key
  as a typed key of the recorded PRNG implementation (``threefry2x32``),
  under the recorded ``jax_threefry_partitionable`` flag;
* draw: one vector ``jax.random.normal(key_t, (P,), float32)``, P the total
  number of parameters (frozen leaves included);
* leaf order: ``jax.tree_util.tree_leaves`` order, each leaf taking the next
  ``size`` entries in C order;
* scale: σ·C, added to the clipped sum before division by D (zero on frozen
  leaves).

References: Abadi et al. 2016, arXiv:1607.00133, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_positive
from trainers.losses import LossFn, softmax_cross_entropy
from trainers.sketch import DEFAULT_SKETCH_DIM, update_sketch

__all__ = [
    "ReferenceGradient",
    "reference_noise",
    "reference_noisy_gradient",
    "reference_step",
]

#: The PRNG implementation the noise rule uses.
_IMPL = "threefry2x32"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ReferenceGradient:
    """The reference computation of one logical step.

    Attributes:
        gradient: float64 NumPy pytree ḡ, the noisy averaged gradient (zero on
            frozen leaves) — what the optimiser receives.
        clipped_sum: float64 pytree Σ ĝ_i before noise.
        batch_size: L.
        num_clipped: examples with ‖g_i‖ > C.
        num_nonfinite: examples whose loss or gradient was not finite
            (each contributed exactly zero).
        max_grad_norm: max ‖g_i‖ over the finite examples (0.0 if none).
        max_clipped_norm: max ‖ĝ_i‖.
        loss: mean loss over the finite examples (NaN if none).
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
    num_nonfinite: int = 0


def _trained(params: Any, frozen: Any) -> list[bool]:
    """True for each trained leaf (``tree_leaves`` order); ``frozen`` as for the trainer:
    ``None``, a callable ``(path, leaf) -> bool`` or a pytree of bools (true = frozen)."""
    import jax

    leaves_with_path = jax.tree_util.tree_leaves_with_path(params)
    if frozen is None:
        return [True] * len(leaves_with_path)
    if callable(frozen):
        return [not bool(frozen(path, leaf)) for path, leaf in leaves_with_path]
    flags = jax.tree_util.tree_leaves(frozen)
    if len(flags) != len(leaves_with_path):
        from dpverify.errors import InvalidArgument

        raise InvalidArgument(
            f"frozen has {len(flags)} leaves, params have {len(leaves_with_path)}"
        )
    return [not bool(f) for f in flags]


def reference_noise(
    noise_key: Any, step: int, like: Any, *, threefry_partitionable: bool = True
) -> list[np.ndarray]:
    """The run's standard normal noise of step ``step``, as float64 NumPy leaves.

    The rule is in the module docstring.  ``noise_key`` is raw ``uint32``
    key data (wrapped as ``threefry2x32``) or a typed threefry key;
    ``like`` gives the leaves' shapes in ``tree_leaves`` order.
    """
    import jax
    import jax.numpy as jnp

    if jnp.issubdtype(getattr(noise_key, "dtype", None), jax.dtypes.prng_key):  # type: ignore[arg-type]
        key = noise_key
        if _IMPL not in str(jax.random.key_impl(key)):
            from dpverify.errors import InvalidArgument

            raise InvalidArgument(f"noise key implementation must be {_IMPL!r}")
    else:
        key = jax.random.wrap_key_data(jnp.asarray(noise_key, jnp.uint32), impl=_IMPL)
    shapes = [np.shape(a) for a in jax.tree_util.tree_leaves(like)]
    total = int(sum(int(np.prod(sh)) for sh in shapes))
    with jax.threefry_partitionable(bool(threefry_partitionable)):
        draw = jax.random.normal(jax.random.fold_in(key, np.uint32(step)), (total,), jnp.float32)
    flat = np.asarray(draw, dtype=np.float64)
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out


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
    threefry_partitionable: bool = True,
    extra_sum: Any = None,
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
        frozen: frozen-parameter selector (``None``, a callable
            ``(path, leaf) -> bool`` or a pytree of bools; true = frozen).
        loss_fn: per-example loss.
        sketch_dim: k of the update sketch.
        threefry_partitionable: the PRNG flag the run's noise was drawn with.
        extra_sum: ``None``, or a pytree like ``params`` of clipped
            contributions the run adds to the sum itself (the sampled,
            included canaries of a run trained with ``--canaries``), added
            before the noise.

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
    trainable = _trained(params, frozen)
    # float32 draws (outside x64 mode), then float64.
    noise = reference_noise(noise_key, t, params, threefry_partitionable=threefry_partitionable)
    x_np, y_np = np.asarray(x), np.asarray(y)

    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        p64 = _to_float64(params)
        treedef = jax.tree_util.tree_structure(p64)

        value_and_grad = _example_value_and_grad(model_apply, loss_fn)
        total = [np.zeros(np.shape(a), np.float64) for a in jax.tree_util.tree_leaves(p64)]
        losses, num_clipped, num_nonfinite, max_norm, max_clipped = [], 0, 0, 0.0, 0.0
        for i in idx:
            xi = x_np[i]
            xi = xi.astype(np.float64) if np.issubdtype(xi.dtype, np.floating) else xi
            loss, g = value_and_grad(p64, jnp.asarray(xi), jnp.asarray(y_np[i]))
            g = [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(g)]
            with np.errstate(all="ignore"):
                norm = math.sqrt(
                    sum(float(np.sum(a * a)) for a, tr in zip(g, trainable, strict=True) if tr)
                )
            if not (math.isfinite(norm) and math.isfinite(float(loss))):
                num_nonfinite += 1  # factor 0: this example adds nothing
                continue
            factor = min(1.0, C / norm) if norm > 0 else 1.0
            num_clipped += int(norm > C)
            max_norm = max(max_norm, norm)
            max_clipped = max(max_clipped, norm * factor)
            losses.append(float(loss))
            for k, (a, tr) in enumerate(zip(g, trainable, strict=True)):
                if tr:
                    total[k] += a * factor

    if extra_sum is not None:
        extra = [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(extra_sum)]
        total = [s + e if tr else s for s, e, tr in zip(total, extra, trainable, strict=True)]
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
        num_nonfinite=num_nonfinite,
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
    trainable = _trained(params, kwargs.get("frozen"))
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
