"""The DP math of the masked DP-SGD step: pure, traced functions, no dispatch.

One logical step t with sampled indices B_t (|B_t| = L), clip norm C, noise
multiplier σ and fixed denominator D = q·N (the expected batch size) is

1. for each physical batch of p rows with a 0/1 mask m (:mod:`trainers.batching`)
   — :func:`accumulate_batch` —
   per-example losses ℓ_i and gradients g_i = ∇ℓ(x_i) (``vmap(grad)``), the
   global L2 norm ‖g_i‖ over the trainable leaves, the clip factor
   f_i = min(1, C/‖g_i‖), and the masked sum Σ_i where(keep_i, f_i·g_i, 0);
   keep_i = m_i ∧ finite_i: a padding row adds exactly 0 even if it is NaN
   (``where``, not multiplication), and a *real* example whose loss or
   gradient is not finite gets clip factor 0 and also adds exactly 0 (it is
   counted in ``num_nonfinite``; without this one NaN example would turn the
   released update into NaN and reveal that it was sampled);
2. once per logical step — :func:`finalize_step` — the noisy sum
   S + σC·z_t with z_t = :func:`gaussian_noise` (noise_key, t), divided by D,
   frozen leaves zeroed, then the Optax update; the update sketch
   (:mod:`trainers.sketch`) of the averaged noisy gradient is computed in the
   same function.

Each piece of the mechanism is a field of :class:`Mechanics` (which rows are
real, clip factors, per-batch and per-step noise, the denominator, what the
optimiser receives).  :data:`PRODUCTION` is the correct composition and the
only one the trainer uses unless it is handed another:
:mod:`trainers.mutations` builds deliberately wrong compositions by replacing
one field, so the production step contains no deliberately-wrong branch.

The noise rule (the trainer's; the reference trainer writes its own, see
:mod:`trainers.reference`): ``key_t = fold_in(noise_key, t)``; ONE draw
``z = normal(key_t, (P,), float32)`` with P the total parameter count; leaf i
(in ``tree_leaves`` order, frozen leaves included) is the next ``size_i``
entries reshaped to the leaf's shape; multiplied by σ·C.  The PRNG
implementation and flags are pinned by :mod:`trainers.prng`.

References: Abadi et al. 2016, "Deep Learning with Differential Privacy",
arXiv:1607.00133, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from dpverify._validate import check_int, check_positive
from trainers.precision import check_precision, compute_dtype
from trainers.sketch import DEFAULT_SKETCH_DIM, sketch_jax

__all__ = [
    "PRODUCTION",
    "DPSGDConfig",
    "Mechanics",
    "StepStats",
    "accumulate_batch",
    "finalize_step",
    "gaussian_noise",
    "init_carry",
    "merge_carries",
    "per_example_grads",
    "trainable_leaves",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPSGDConfig:
    """Hyperparameters of the masked DP-SGD step.

    Attributes:
        clip_norm: C > 0, per-example L2 clipping bound.
        noise_multiplier: σ ≥ 0; the noise added to the sum has std σ·C.
        denominator: D > 0, the divisor of the noisy sum: the expected batch
            size q·N (never the realised L, which is private).
        physical_batch_size: p ≥ 1 rows per compiled physical batch.
        precision: ``"float32"``, ``"tf32"`` or ``"bf16"`` (:mod:`trainers.precision`).
        mutation: ``None`` (correct) or a name in
            :data:`trainers.mutations.MUTATIONS` (testing only: selects a
            deliberately wrong :class:`Mechanics`).
        sketch_dim: k, the number of update-sketch projections recorded.
        clipping: how per-example norms and the clipped sum are computed:
            ``"vmap"`` (per-example gradients), ``"ghost"`` (ghost norms and
            book-keeping, :mod:`trainers.clipping`) or ``"auto"`` (ghost when
            every trainable layer is supported, else vmap).  The mechanism
            (clip, mask, noise, denominator) is the same either way.
    """

    clip_norm: float
    noise_multiplier: float
    denominator: float
    physical_batch_size: int
    precision: str = "float32"
    mutation: str | None = None
    sketch_dim: int = DEFAULT_SKETCH_DIM
    clipping: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_norm", check_positive("clip_norm", self.clip_norm))
        object.__setattr__(
            self,
            "noise_multiplier",
            check_positive("noise_multiplier", self.noise_multiplier, allow_zero=True),
        )
        object.__setattr__(self, "denominator", check_positive("denominator", self.denominator))
        object.__setattr__(
            self,
            "physical_batch_size",
            check_int("physical_batch_size", self.physical_batch_size, minimum=1),
        )
        check_precision(self.precision)
        if self.mutation is not None:
            from trainers.mutations import check_mutation

            check_mutation(self.mutation)
        object.__setattr__(self, "sketch_dim", check_int("sketch_dim", self.sketch_dim, minimum=1))
        from trainers.clipping.select import check_clipping

        check_clipping(self.clipping)

    @property
    def noise_std(self) -> float:
        """σ·C, the standard deviation of the noise added to the clipped sum."""
        return self.noise_multiplier * self.clip_norm


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepStats:
    """What one logical step did, as the trainer measured (or, for a mutated
    trainer, believes) it.  Field meanings are those of :class:`dpverify.ledger.records.Step`.

    Attributes:
        batch_size: L, real examples in the logical batch.
        noise_std: std of the noise added to the clipped sum (σ·C).
        noise_draws: times noise was drawn this step (1).
        num_clipped: real examples whose pre-clip norm exceeded C.
        num_nonfinite: real examples whose loss or gradient was not finite
            (they contributed exactly zero).
        max_grad_norm: largest pre-clip per-example norm over the finite real
            examples (0.0 when there is none).
        max_clipped_norm: largest per-example norm after clipping (≤ C).
        denominator: divisor of the noisy sum (q·N).
        physical_batches: ⌈L/p⌉ (the last may be a smaller tail batch, :mod:`trainers.dispatch`).
        update_sketch: k projections of the noisy averaged gradient.
        loss: mean loss over the finite real examples (NaN when none); private.
    """

    batch_size: int
    noise_std: float
    noise_draws: int
    num_clipped: int
    max_grad_norm: float
    max_clipped_norm: float
    denominator: float
    physical_batches: int
    update_sketch: tuple[float, ...]
    loss: float
    num_nonfinite: int = 0

    def ledger_fields(self) -> dict[str, Any]:
        """Keyword arguments for :class:`dpverify.ledger.records.Step` (besides
        ``step`` and ``indices``)."""
        return {
            "noise_std": self.noise_std,
            "noise_draws": self.noise_draws,
            "num_clipped": self.num_clipped,
            "num_nonfinite": self.num_nonfinite,
            "max_grad_norm": self.max_grad_norm,
            "max_clipped_norm": self.max_clipped_norm,
            "denominator": self.denominator,
            "physical_batches": self.physical_batches,
            "update_sketch": self.update_sketch,
        }


def trainable_leaves(params: Any, frozen: Any = None) -> tuple[bool, ...]:
    """Which leaves of ``params`` are trained, in ``tree_leaves`` order.

    Args:
        params: the parameter pytree.
        frozen: ``None`` (train everything); a callable ``frozen(path, leaf)
            -> bool`` (``path`` as in ``jax.tree_util.tree_map_with_path``)
            returning true for frozen leaves; or a pytree of bools with the
            structure of ``params`` (true = frozen).

    Frozen leaves are excluded from the per-example norm, get no gradient, no
    noise and no update.
    """
    import jax

    if frozen is None:
        return tuple(True for _ in jax.tree_util.tree_leaves(params))
    if callable(frozen):
        flags = jax.tree_util.tree_map_with_path(lambda p, a: bool(frozen(p, a)), params)
    else:
        flags = frozen
    leaves = jax.tree_util.tree_leaves(flags)
    n = len(jax.tree_util.tree_leaves(params))
    if len(leaves) != n:
        from dpverify.errors import InvalidArgument

        raise InvalidArgument(f"frozen has {len(leaves)} leaves, params have {n}")
    return tuple(not bool(f) for f in leaves)


def gaussian_noise(noise_key: Any, step: Any, like: Any, *, batch: Any = None) -> Any:
    """Standard normal float32 noise shaped like the pytree ``like``, for step ``step``.

    ``key_t = fold_in(noise_key, step)`` (and, when ``batch`` is given — only a
    mutation does that — ``fold_in(key_t, batch + 1)``); ONE draw
    ``z = normal(key_t, (P,), float32)`` with P the total number of parameters;
    leaf i (in ``tree_leaves`` order) is the next ``size_i`` entries of z
    reshaped to the leaf's shape.  Multiply by σ·C yourself.
    """
    import jax
    import jax.numpy as jnp

    key = jax.random.fold_in(noise_key, step)
    if batch is not None:
        key = jax.random.fold_in(key, batch + 1)
    leaves, treedef = jax.tree_util.tree_flatten(like)
    shapes = [jnp.shape(a) for a in leaves]
    sizes = [math.prod(sh) for sh in shapes]
    z = jax.random.normal(key, (sum(sizes),), jnp.float32)
    out, offset = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(z[offset : offset + size].reshape(shape))
        offset += size
    return jax.tree_util.tree_unflatten(treedef, out)


# -- the pieces of the mechanism (correct versions) --------------------------------------


def _real_rows(mask: Any) -> Any:
    """Rows that are real examples: the mask."""
    return mask


def _clip_factors(norms: Any, finite: Any, clip_norm: float) -> Any:
    """f_i = C / max(‖g_i‖, C) = min(1, C/‖g_i‖); 0 for a non-finite example."""
    import jax.numpy as jnp

    clip = jnp.float32(clip_norm)
    return jnp.where(finite, clip / jnp.maximum(jnp.where(finite, norms, clip), clip), 0.0)


def _no_batch_noise(sums: Any, noise_key: Any, step: Any, batch: Any, config: DPSGDConfig) -> Any:
    """Nothing per physical batch: the noise is added once per logical step."""
    return sums


def _keep_sum(leaves: list, trainable: tuple[bool, ...], config: DPSGDConfig) -> list:
    """The clipped sum is used as is (each example was clipped already)."""
    return leaves


def _step_noise_key(noise_key: Any, step: Any) -> Any:
    """The noise of step t is drawn from ``fold_in(noise_key, t)`` (via :func:`gaussian_noise`)."""
    return noise_key, step


def _add_step_noise(leaves: list, noise_key: Any, step: Any, config: DPSGDConfig) -> list:
    """S + σC·z_t, z_t = :func:`gaussian_noise` (noise_key, t)."""
    import jax
    import jax.numpy as jnp

    z = jax.tree_util.tree_leaves(gaussian_noise(noise_key, step, leaves))
    std = jnp.float32(config.noise_std)
    return [s + std * n for s, n in zip(leaves, z, strict=True)]


def _fixed_denominator(count: Any, config: DPSGDConfig) -> Any:
    """D = q·N, a public constant (the realised L is private)."""
    import jax.numpy as jnp

    return jnp.float32(config.denominator)


def _release_noisy(noisy: Any, clean: Any) -> Any:
    """The optimiser receives the noisy averaged gradient."""
    return noisy


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mechanics:
    """The composable pieces of one DP-SGD step (all traced, pure).

    Attributes:
        real_rows: ``(mask) -> bool[p]`` rows summed and counted as examples.
        clip_factors: ``(norms, finite, C) -> float32[p]`` per-example factors.
        clip_norm_scale: the clipping bound used is ``clip_norm_scale · C``.
        batch_noise: ``(sums, noise_key, step, batch, config) -> sums`` noise
            added to each physical batch's sum (none when correct).
        transform_sum: ``(leaves, trainable, config) -> leaves`` applied to the
            step's clipped sum before noise (identity when correct).
        noise_key_for_step: ``(noise_key, step) -> (key, step')`` what the
            step's noise is drawn from (identity when correct).
        step_noise: ``(leaves, noise_key, step, config) -> leaves`` the
            once-per-step noise.
        denominator: ``(count, config) -> float32`` divisor of the noisy sum.
        released: ``(noisy, clean) -> grads`` what the optimiser receives
            (the sketch always describes ``noisy``).
    """

    real_rows: Callable[[Any], Any] = _real_rows
    clip_factors: Callable[[Any, Any, float], Any] = _clip_factors
    clip_norm_scale: float = 1.0
    batch_noise: Callable[..., Any] = _no_batch_noise
    transform_sum: Callable[..., list] = _keep_sum
    noise_key_for_step: Callable[[Any, Any], Any] = _step_noise_key
    step_noise: Callable[..., list] = _add_step_noise
    denominator: Callable[[Any, DPSGDConfig], Any] = _fixed_denominator
    released: Callable[[Any, Any], Any] = _release_noisy


#: The correct DP-SGD step.
PRODUCTION = Mechanics()


def per_example_grads(
    model_apply: Callable, loss_fn: Callable, precision: str, params: Any, xb: Any, yb: Any
) -> tuple[Any, Any]:
    """Per-example float32 losses ``(p,)`` and gradients (leaves ``(p, …)``) by ``vmap(grad)``.

    A row of ``xb`` holding a NaN or ±inf is differentiated at zeros instead,
    and its loss is NaN, so the caller counts it as non-finite and keeps it
    out of the sum, as it would have anyway.  The reason is the other rows:
    JAX's ``vmap`` of a grouped convolution's kernel gradient folds the
    examples into feature groups of one convolution, where a NaN example
    makes every example's gradient NaN (and would zero the whole batch).  A
    NaN that first appears inside the model, from finite inputs, is not
    caught here.
    """
    import jax
    import jax.numpy as jnp

    cdt = compute_dtype(precision)

    def cast(a):
        return a.astype(cdt) if jnp.issubdtype(a.dtype, jnp.floating) else a

    def example_loss(p, x, y):
        logits = model_apply(jax.tree_util.tree_map(cast, p), cast(x)[None])
        return loss_fn(logits.astype(jnp.float32), y[None])[0]

    bad = None
    if jnp.issubdtype(xb.dtype, jnp.floating):
        bad = ~jnp.all(jnp.isfinite(xb.reshape((xb.shape[0], -1))), axis=1)
        xb = jnp.where(bad.reshape((-1,) + (1,) * (xb.ndim - 1)), jnp.zeros((), xb.dtype), xb)
    losses, grads = jax.vmap(jax.value_and_grad(example_loss), in_axes=(None, 0, 0))(params, xb, yb)
    grads = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads)
    losses = losses.astype(jnp.float32)
    if bad is not None:
        losses = jnp.where(bad, jnp.float32(jnp.nan), losses)
    return losses, grads


def init_carry(params: Any) -> dict[str, Any]:
    """The zero accumulator of a logical step."""
    import jax
    import jax.numpy as jnp

    return {
        "sum": jax.tree_util.tree_map(lambda a: jnp.zeros(jnp.shape(a), jnp.float32), params),
        "num_clipped": jnp.zeros((), jnp.int32),
        "num_nonfinite": jnp.zeros((), jnp.int32),
        "max_grad_norm": jnp.zeros((), jnp.float32),
        "max_clipped_norm": jnp.zeros((), jnp.float32),
        "loss_sum": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
    }


def merge_carries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two accumulators of the same logical step as one (:func:`init_carry`'s fields).

    Sums and counts add, maxima take the maximum: the accumulator of the
    union of the two sets of physical batches, up to float32 summation order.
    """
    import jax
    import jax.numpy as jnp

    out = {}
    for name, value in a.items():
        if name in ("max_grad_norm", "max_clipped_norm"):
            out[name] = jnp.maximum(value, b[name])
        else:
            out[name] = jax.tree_util.tree_map(jnp.add, value, b[name])
    return out


def _vmap_norms_and_sum(grads: Any, trainable: tuple[bool, ...], p: int) -> tuple[Any, Any]:
    """Norms over the trainable leaves of per-example gradients, and
    ``weighted_sum(factor, keep) = Σ_i where(keep_i, factor_i·g_i, 0)`` per leaf."""
    import jax
    import jax.numpy as jnp

    leaves = jax.tree_util.tree_leaves(grads)
    sq = jnp.zeros((p,), jnp.float32)
    for g, t in zip(leaves, trainable, strict=True):
        if t:
            sq = sq + jnp.sum(jnp.square(g.reshape(p, -1)), axis=1)

    def weighted_sum(factor: Any, keep: Any) -> list:
        def masked_sum(g, t):
            if not t:
                return jnp.zeros(g.shape[1:], jnp.float32)
            shape = (p,) + (1,) * (g.ndim - 1)
            return jnp.sum(jnp.where(keep.reshape(shape), g * factor.reshape(shape), 0.0), axis=0)

        return [masked_sum(g, t) for g, t in zip(leaves, trainable, strict=True)]

    return jnp.sqrt(sq), weighted_sum


def accumulate_batch(
    mech: Mechanics,
    config: DPSGDConfig,
    trainable: tuple[bool, ...],
    carry: dict[str, Any],
    losses: Any,
    grads: Any,
    mask: Any,
    noise_key: Any,
    step: Any,
    batch: Any,
) -> dict[str, Any]:
    """Add one physical batch's clipped, masked per-example gradients to ``carry``.

    Args:
        mech: the :class:`Mechanics` (``PRODUCTION`` when correct).
        config: the step's :class:`DPSGDConfig`.
        trainable: :func:`trainable_leaves` of the parameters.
        carry: the accumulator (:func:`init_carry`).
        losses, grads: :func:`per_example_grads` of the batch's p rows, or
            ``grads`` a :class:`trainers.clipping.GhostPass` (norms and the
            weighted sum without per-example gradients).
        mask: bool ``(p,)``, true on real rows.
        noise_key, step, batch: the run's key, the logical step t, the
            physical batch number (only a mutation uses them here).
    """
    import jax
    import jax.numpy as jnp

    from trainers.clipping.ghost import GhostPass

    p = mask.shape[0]
    treedef = jax.tree_util.tree_structure(carry["sum"])
    if isinstance(grads, GhostPass):
        norms, weighted_sum = grads.norms, grads.weighted_sum
    else:
        norms, weighted_sum = _vmap_norms_and_sum(grads, trainable, p)
    finite = jnp.isfinite(norms) & jnp.isfinite(losses)
    clip_norm = config.clip_norm * mech.clip_norm_scale
    factor = mech.clip_factors(norms, finite, clip_norm)
    real = mech.real_rows(mask)
    keep = real & finite

    sums = weighted_sum(factor, keep)
    sums = mech.batch_noise(sums, noise_key, step, batch, config)
    old = jax.tree_util.tree_leaves(carry["sum"])
    new_sum = jax.tree_util.tree_unflatten(treedef, [a + b for a, b in zip(old, sums, strict=True)])
    clipped = jnp.where(keep, norms * factor, 0.0)
    return {
        "sum": new_sum,
        "num_clipped": carry["num_clipped"]
        + jnp.sum(keep & (norms > jnp.float32(clip_norm))).astype(jnp.int32),
        "num_nonfinite": carry["num_nonfinite"] + jnp.sum(real & ~finite).astype(jnp.int32),
        "max_grad_norm": jnp.maximum(carry["max_grad_norm"], jnp.max(jnp.where(keep, norms, 0.0))),
        "max_clipped_norm": jnp.maximum(carry["max_clipped_norm"], jnp.max(clipped)),
        "loss_sum": carry["loss_sum"] + jnp.sum(jnp.where(keep, losses, 0.0)),
        "count": carry["count"] + jnp.sum(real).astype(jnp.int32),
    }


def finalize_step(
    mech: Mechanics,
    config: DPSGDConfig,
    trainable: tuple[bool, ...],
    optimizer: Any,
    params: Any,
    opt_state: Any,
    carry: dict[str, Any],
    noise_key: Any,
    step: Any,
) -> tuple[Any, Any, dict[str, Any]]:
    """Noise once, divide by D, zero frozen leaves, apply the optimiser.

    Returns:
        ``(params, opt_state, out)``; ``out`` holds the step's statistics
        (``num_clipped``, ``num_nonfinite``, ``max_grad_norm``,
        ``max_clipped_norm``, ``loss_sum``, ``count``) and ``sketch``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    leaves, treedef = jax.tree_util.tree_flatten(carry["sum"])
    leaves = mech.transform_sum(leaves, trainable, config)
    key, noise_step = mech.noise_key_for_step(noise_key, step)
    noisy = mech.step_noise(leaves, key, noise_step, config)
    denom = mech.denominator(carry["count"], config)

    def average(parts):
        return [
            s / denom if t else jnp.zeros_like(s) for s, t in zip(parts, trainable, strict=True)
        ]

    noisy_grads = jax.tree_util.tree_unflatten(treedef, average(noisy))
    grads = mech.released(noisy_grads, jax.tree_util.tree_unflatten(treedef, average(leaves)))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree_util.tree_unflatten(
        treedef,
        [
            u if t else jnp.zeros_like(u)
            for u, t in zip(jax.tree_util.tree_leaves(updates), trainable, strict=True)
        ],
    )
    params = optax.apply_updates(params, updates)
    out = {
        k: carry[k]
        for k in (
            "num_clipped",
            "num_nonfinite",
            "max_grad_norm",
            "max_clipped_norm",
            "loss_sum",
            "count",
        )
    }
    out["sketch"] = sketch_jax(noisy_grads, k=config.sketch_dim)
    return params, opt_state, out
