"""Masked DP-SGD: Poisson-correct, fixed-shape, compiled once per run.

One logical step t with sampled indices B_t (|B_t| = L, random), clip norm C,
noise multiplier σ, fixed denominator D = q·N (the expected batch size):

1. cut B_t into k = ⌈L/p⌉ physical batches of exactly p rows plus a 0/1 mask
   (:mod:`trainers.batching`); L = 0 gives k = 0;
2. for each physical batch (a loop over rows of shape ``(p, …)``):
   per-example gradients g_i = ∇ℓ(x_i) by
   ``vmap(grad)``, global L2 norm over the trainable leaves, clipping
   ĝ_i = g_i · min(1, C/‖g_i‖), and the masked sum Σ_i where(m_i, ĝ_i, 0)
   (``where``, not multiplication, so a NaN/inf padding row adds exactly 0);
3. add z ~ N(0, σ²C²·I) once, divide by D, mask frozen leaves and apply the
   Optax update; the statistics and the update sketch (:mod:`trainers.sketch`)
   are fetched to the host in one transfer per logical step.

Dispatch: normally the whole logical step is ONE call of one compiled function
(``fused``): the host writes the k physical batches into a fixed ``(K, p)``
index buffer and ``(K, p)`` mask and passes k as a runtime value;
``lax.fori_loop(0, k, …)`` (a ``while_loop``: rows k … K−1 are never computed
on) runs step 2 on the first k rows, then step 3 follows in the same function.
K is fixed per trainer, from the expected batch size D:
K = max(1, ⌈(D + 6·√D + 6)/p⌉) (L has std ≤ √D under Poisson sampling, so
P(L > K·p) is negligible).  When L > K·p (rare; never truncated) the step
falls back to three separately compiled functions, each compiled once: ``init``,
``accumulate`` called once per physical batch, ``finalize`` (k + 2 dispatches).
Both paths run the same traced code (same clip, masked sum, noise key,
statistics and sketch), so they agree up to float32 rounding.  By default a
convolutional model on XLA:CPU always takes the k + 2 path (K = 0): XLA:CPU
runs convolutions inside a loop body several times slower (see
``MaskedDPSGD``'s ``fused_batches``).

Noise: the key of step t is ``jax.random.fold_in(noise_key, t)``; one float32
standard normal vector of length P (all parameters) is drawn from it and cut
into the leaves in ``jax.tree_util.tree_leaves`` order (frozen leaves included,
so the assignment does not depend on what is frozen); it is multiplied by σC
(zero on frozen leaves).  :func:`gaussian_noise` is that rule; the reference
trainer calls it.

The realised L never reaches the compiled code as a shape or a static value,
so each of the step's functions compiles at most once per run whatever the
batch sizes: ``compilations`` (the max over them) is 1.

Several devices (``devices=n``): each physical batch is sharded along its batch
axis over a 1-D mesh, everything else is replicated, and the same compiled
functions run data-parallel (:mod:`trainers.sharding`); the noise is still
drawn once per logical step from the same key, so the result equals the
single-device step up to float32 summation order.

References: Abadi et al. 2016, "Deep Learning with Differential Privacy",
arXiv:1607.00133; Chua et al. 2024, "How Private are DP-SGD Implementations?"
(why Poisson sampling must not be truncated or replaced by shuffling).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_positive
from trainers.batching import split_physical_batches
from trainers.losses import LossFn, softmax_cross_entropy
from trainers.mutations import check_mutation, mutation_flags
from trainers.precision import check_precision, compute_dtype, precision_context
from trainers.sharding import data_parallel
from trainers.sketch import DEFAULT_SKETCH_DIM, sketch_jax

__all__ = [
    "DPSGDConfig",
    "MaskedDPSGD",
    "StepStats",
    "default_fused_batches",
    "gaussian_noise",
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
            :data:`trainers.mutations.MUTATIONS` (deliberately wrong).
        sketch_dim: k, the number of update-sketch projections recorded.
    """

    clip_norm: float
    noise_multiplier: float
    denominator: float
    physical_batch_size: int
    precision: str = "float32"
    mutation: str | None = None
    sketch_dim: int = DEFAULT_SKETCH_DIM

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
        check_mutation(self.mutation)
        object.__setattr__(self, "sketch_dim", check_int("sketch_dim", self.sketch_dim, minimum=1))

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
        max_grad_norm: largest pre-clip per-example norm (0.0 when L = 0; NaN
            if a real example's gradient was NaN).
        max_clipped_norm: largest per-example norm after clipping (≤ C).
        denominator: divisor of the noisy sum (q·N).
        physical_batches: ⌈L/p⌉.
        update_sketch: k projections of the noisy averaged gradient.
        loss: mean loss over the real examples (NaN when L = 0).
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

    def ledger_fields(self) -> dict[str, Any]:
        """Keyword arguments for :class:`dpverify.ledger.records.Step` (besides
        ``step`` and ``indices``)."""
        return {
            "noise_std": self.noise_std,
            "noise_draws": self.noise_draws,
            "num_clipped": self.num_clipped,
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


def default_fused_batches(expected_batch_size: float, physical_batch_size: int) -> int:
    """K = max(1, ⌈(E + 6·√E + 6)/p⌉): physical batches the one-dispatch step holds.

    Under Poisson sampling L ~ Binomial(N, q) with mean E = q·N and standard
    deviation √(E(1−q)) ≤ √E, so L > E + 6·√E + 6 is a tail event of
    probability below ~1e-9 (normal approximation; the +6 covers small E,
    where the Poisson tail is heavier: E = 1 gives P(L > 13) < 1e-10).  A
    larger L is still processed whole, through the k + 2 dispatch path.
    """
    e = check_positive("expected_batch_size", expected_batch_size)
    p = check_int("physical_batch_size", physical_batch_size, minimum=1)
    return max(1, math.ceil((e + 6.0 * math.sqrt(e) + 6.0) / p))


def gaussian_noise(noise_key: Any, step: Any, like: Any, *, batch: Any = None) -> Any:
    """Standard normal float32 noise shaped like the pytree ``like``, for step ``step``.

    The rule (the reference trainer and the auditor rely on it):
    ``key_t = fold_in(noise_key, step)`` (and, for the ``noise_per_physical_batch``
    mutation only, ``fold_in(key_t, batch + 1)``); ONE draw
    ``z = normal(key_t, (P,), float32)`` with P the total number of parameters;
    leaf i (in ``tree_leaves`` order, frozen leaves included) is the next
    ``size_i`` entries of z reshaped to the leaf's shape.  A single flat draw
    keeps the compiled graph small whatever the number of leaves.  Multiply by
    σ·C yourself.
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


class MaskedDPSGD:
    """The masked DP-SGD step (see the module docstring for the algorithm).

    Args:
        model_apply: ``model_apply(params, x) -> logits`` for a batch ``x``
            (e.g. ``lambda p, x: model.apply({"params": p}, x)``).
        optimizer: an ``optax.GradientTransformation``.
        config: :class:`DPSGDConfig`.
        frozen: frozen-parameter selector (see :func:`trainable_leaves`).
        loss_fn: per-example loss ``loss_fn(logits, labels) -> (batch,)``.
        donate: donate ``params`` and ``opt_state`` buffers to the update
            (faster, less memory): the arrays passed to :meth:`step` must not
            be used afterwards — use the returned ones.
        devices: ``None`` or 1 (one device, the default), a device count n, or
            a sequence of devices: run data-parallel over them
            (:mod:`trainers.sharding`); ``physical_batch_size`` must be
            divisible by n.  Returned parameters are replicated on them.
        fused_batches: K, the physical batches the one-dispatch path holds;
            0 disables it (every step makes k + 2 dispatches).  ``None``
            (default) chooses at the first step: K from the expected batch
            size D (:func:`default_fused_batches`), except on XLA:CPU when
            the model contains a convolution, where K = 0 (XLA:CPU runs a
            loop body containing convolutions 3–11× slower than the same
            body compiled as its own function; measured in
            ``docs/masked-dpsgd.md``).  A larger K costs only a larger index
            buffer per step, never computation.

    Attributes:
        compilations: how many times the step was traced (compiled): the
            maximum over its compiled functions; 1 for a healthy run.
        trace_counts: per compiled function trace counts (``fused``, and
            ``init``/``accumulate``/``finalize`` of the fallback path, which
            stay 0 until some L > K·p).
        fused_batches: K (``None`` until the first step when chosen automatically).
        placement: the :class:`trainers.sharding.DataParallel` placement, or
            ``None`` on a single device.
    """

    def __init__(
        self,
        model_apply: Callable[[Any, Any], Any],
        optimizer: Any,
        config: DPSGDConfig,
        *,
        frozen: Any = None,
        loss_fn: LossFn = softmax_cross_entropy,
        donate: bool = True,
        devices: Any = None,
        fused_batches: int | None = None,
    ) -> None:
        import jax

        if not isinstance(config, DPSGDConfig):
            from dpverify.errors import InvalidArgument

            raise InvalidArgument(f"config={config!r} must be a DPSGDConfig")
        self.model_apply = model_apply
        self.optimizer = optimizer
        self.config = config
        self.frozen = frozen
        self.loss_fn = loss_fn
        self._flags = mutation_flags(config.mutation)
        self._trainable: tuple[bool, ...] | None = None
        self._data: tuple[Any, Any, Any, Any] | None = None
        self.fused_batches: int | None = (
            None if fused_batches is None else check_int("fused_batches", fused_batches, minimum=0)
        )
        self.trace_counts = {"fused": 0, "init": 0, "accumulate": 0, "finalize": 0}
        self.placement = data_parallel(devices, physical_batch_size=config.physical_batch_size)
        shard: dict[str, dict[str, Any]] = {
            "fused": {},
            "init": {},
            "accumulate": {},
            "finalize": {},
        }
        if self.placement is not None:
            from jax.sharding import NamedSharding, PartitionSpec

            from trainers.sharding import AXIS

            r, b = self.placement.replicated, self.placement.batch
            rows = NamedSharding(self.placement.mesh, PartitionSpec(None, AXIS))
            shard = {
                "fused": {"in_shardings": (r, r, r, r, rows, rows, r, r, r), "out_shardings": r},
                "init": {"in_shardings": (r,), "out_shardings": r},
                "accumulate": {"in_shardings": (r, r, r, r, b, b, r, r, r), "out_shardings": r},
                "finalize": {"in_shardings": (r,) * 5, "out_shardings": r},
            }
        self._fused = jax.jit(
            self._fused_impl, donate_argnums=(0, 1) if donate else (), **shard["fused"]
        )
        self._init = jax.jit(self._init_impl, **shard["init"])
        self._accumulate = jax.jit(
            self._accumulate_impl, donate_argnums=(0,), **shard["accumulate"]
        )
        self._finalize = jax.jit(
            self._finalize_impl, donate_argnums=(0, 1) if donate else (), **shard["finalize"]
        )

    @property
    def device_count(self) -> int:
        """n, the number of devices each physical batch is split across (1 if unsharded)."""
        return 1 if self.placement is None else self.placement.count

    @property
    def compilations(self) -> int:
        """Traces of the step's compiled functions (max over them); 1 when healthy."""
        return max(self.trace_counts.values())

    def cache_sizes(self) -> dict[str, int]:
        """Entries in each compiled function's jit cache (at most 1 each when healthy)."""
        return {
            name: int(fn._cache_size())
            for name, fn in (
                ("fused", self._fused),
                ("init", self._init),
                ("accumulate", self._accumulate),
                ("finalize", self._finalize),
            )
        }

    # -- compiled pieces ---------------------------------------------------------

    def _fused_impl(
        self, params, opt_state, x_all, y_all, idx_buf, mask_buf, count, noise_key, step
    ):
        """The whole logical step: the first ``count`` rows of the buffers, then finalize."""
        import jax

        self.trace_counts["fused"] += 1

        def body(j, carry):
            return self._accumulate_body(
                carry, params, x_all, y_all, idx_buf[j], mask_buf[j], noise_key, step, j
            )

        carry = jax.lax.fori_loop(0, count, body, self._init_body(params))
        return self._finalize_body(params, opt_state, carry, noise_key, step)

    def _init_impl(self, params):
        self.trace_counts["init"] += 1
        return self._init_body(params)

    def _accumulate_impl(self, carry, params, x_all, y_all, idx, mask, noise_key, step, batch):
        self.trace_counts["accumulate"] += 1
        return self._accumulate_body(carry, params, x_all, y_all, idx, mask, noise_key, step, batch)

    def _finalize_impl(self, params, opt_state, carry, noise_key, step):
        self.trace_counts["finalize"] += 1
        return self._finalize_body(params, opt_state, carry, noise_key, step)

    def _init_body(self, params):
        import jax
        import jax.numpy as jnp

        return {
            "sum": jax.tree_util.tree_map(lambda a: jnp.zeros(jnp.shape(a), jnp.float32), params),
            "num_clipped": jnp.zeros((), jnp.int32),
            "max_grad_norm": jnp.zeros((), jnp.float32),
            "max_clipped_norm": jnp.zeros((), jnp.float32),
            "loss_sum": jnp.zeros((), jnp.float32),
            "count": jnp.zeros((), jnp.int32),
        }

    def _per_example_grads(self, params, xb, yb):
        import jax
        import jax.numpy as jnp

        cdt = compute_dtype(self.config.precision)

        def cast(a):
            return a.astype(cdt) if jnp.issubdtype(a.dtype, jnp.floating) else a

        def example_loss(p, x, y):
            logits = self.model_apply(jax.tree_util.tree_map(cast, p), cast(x)[None])
            return self.loss_fn(logits.astype(jnp.float32), y[None])[0]

        losses, grads = jax.vmap(jax.value_and_grad(example_loss), in_axes=(None, 0, 0))(
            params, xb, yb
        )
        grads = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads)
        return losses.astype(jnp.float32), grads

    def _accumulate_body(self, carry, params, x_all, y_all, idx, mask, noise_key, step, batch):
        import jax
        import jax.numpy as jnp

        cfg, flags, trainable = self.config, self._flags, self._trainable
        xb = jnp.take(x_all, idx, axis=0)
        yb = jnp.take(y_all, idx, axis=0)
        if self.placement is not None:  # per-example work stays on the row's device
            xb, yb = self.placement.constrain_batch(xb), self.placement.constrain_batch(yb)
        losses, grads = self._per_example_grads(params, xb, yb)
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        p = idx.shape[0]
        sq = jnp.zeros((p,), jnp.float32)
        for g, t in zip(leaves, trainable, strict=True):
            if t:
                sq = sq + jnp.sum(jnp.square(g.reshape(p, -1)), axis=1)
        norms = jnp.sqrt(sq)
        clip = jnp.float32(cfg.clip_norm)
        factor = jnp.ones_like(norms) if flags.clip_after_sum else clip / jnp.maximum(norms, clip)
        real = jnp.ones_like(mask) if flags.include_padding else mask

        def masked_sum(g, t):
            if not t:
                return jnp.zeros(g.shape[1:], jnp.float32)
            shape = (p,) + (1,) * (g.ndim - 1)
            return jnp.sum(jnp.where(real.reshape(shape), g * factor.reshape(shape), 0.0), axis=0)

        sums = [masked_sum(g, t) for g, t in zip(leaves, trainable, strict=True)]
        if flags.noise_per_physical_batch:
            std = jnp.float32(cfg.noise_std)
            noise = jax.tree_util.tree_leaves(gaussian_noise(noise_key, step, sums, batch=batch))
            sums = [s + std * z if t else s for s, z, t in zip(sums, noise, trainable, strict=True)]
        old = jax.tree_util.tree_leaves(carry["sum"])
        new_sum = jax.tree_util.tree_unflatten(
            treedef, [a + b for a, b in zip(old, sums, strict=True)]
        )
        clipped = norms * factor
        return {
            "sum": new_sum,
            "num_clipped": carry["num_clipped"] + jnp.sum(real & (norms > clip)).astype(jnp.int32),
            "max_grad_norm": jnp.maximum(
                carry["max_grad_norm"], jnp.max(jnp.where(real, norms, 0.0))
            ),
            "max_clipped_norm": jnp.maximum(
                carry["max_clipped_norm"], jnp.max(jnp.where(real, clipped, 0.0))
            ),
            "loss_sum": carry["loss_sum"] + jnp.sum(jnp.where(real, losses, 0.0)),
            "count": carry["count"] + jnp.sum(real).astype(jnp.int32),
        }

    def _finalize_body(self, params, opt_state, carry, noise_key, step):
        import jax
        import jax.numpy as jnp
        import optax

        cfg, flags, trainable = self.config, self._flags, self._trainable
        leaves, treedef = jax.tree_util.tree_flatten(carry["sum"])
        if flags.clip_after_sum:
            norm = jnp.sqrt(
                sum(jnp.sum(jnp.square(s)) for s, t in zip(leaves, trainable, strict=True) if t)
            )
            scale = jnp.float32(cfg.clip_norm) / jnp.maximum(norm, jnp.float32(cfg.clip_norm))
            leaves = [s * scale for s in leaves]
        if not flags.noise_per_physical_batch:
            std = cfg.noise_multiplier if flags.noise_std_sigma else cfg.noise_std
            noise = jax.tree_util.tree_leaves(gaussian_noise(noise_key, step, leaves))
            leaves = [s + jnp.float32(std) * z for s, z in zip(leaves, noise, strict=True)]
        if flags.divide_by_realised:
            denom = jnp.maximum(carry["count"], 1).astype(jnp.float32)
        else:
            denom = jnp.float32(cfg.denominator)
        grads = [
            s / denom if t else jnp.zeros_like(s) for s, t in zip(leaves, trainable, strict=True)
        ]
        grads = jax.tree_util.tree_unflatten(treedef, grads)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
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
            for k in ("num_clipped", "max_grad_norm", "max_clipped_norm", "loss_sum", "count")
        }
        out["sketch"] = sketch_jax(grads, k=cfg.sketch_dim)
        return params, opt_state, out

    # -- host side ---------------------------------------------------------------

    def _auto_fused_batches(self, params: Any, x: Any, y: Any) -> int:
        """K for ``fused_batches=None``: 0 on XLA:CPU for convolutional models."""
        import jax

        cfg = self.config
        platform = (
            jax.default_backend() if self.placement is None else self.placement.devices[0].platform
        )
        if platform == "cpu":
            # A trace only (no compilation, not counted): does the model convolve?
            jaxpr = jax.make_jaxpr(self._per_example_grads)(params, x[:1], y[:1])
            if "conv_general_dilated" in str(jaxpr):
                return 0
        return default_fused_batches(cfg.denominator, cfg.physical_batch_size)

    def _device_data(self, x: Any, y: Any) -> tuple[Any, Any]:
        import jax.numpy as jnp

        if self._data is not None and self._data[0] is x and self._data[1] is y:
            return self._data[2], self._data[3]
        x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
        if self.placement is not None:  # one copy per device, once per data set
            x_dev, y_dev = self.placement.replicate((x_dev, y_dev))
        self._data = (x, y, x_dev, y_dev)
        return x_dev, y_dev

    def step(
        self,
        params: Any,
        opt_state: Any,
        x: Any,
        y: Any,
        indices: np.ndarray,
        noise_key: Any,
        step: int,
        *,
        pad_index: int | None = None,
    ) -> tuple[Any, Any, StepStats]:
        """Run logical step ``step`` on the examples ``indices`` of ``(x, y)``.

        Args:
            params: parameter pytree (float32); donated when ``donate``.
            opt_state: the optimiser state; donated when ``donate``.
            x: all N training inputs (NumPy or device array; a NumPy array is
                copied to the device once and cached while the same object is
                passed again).
            y: all N integer labels.
            indices: the sampled indices B_t (any length, 0 included).
            noise_key: the run's secret JAX PRNG key.
            step: the logical step index t (selects the noise).
            pad_index: data set index used for padding rows (default: the
                first sampled index); padding never affects the update.

        Returns:
            ``(new_params, new_opt_state, StepStats)``.
        """
        import jax

        t = check_int("step", step, minimum=0)
        cfg = self.config
        if self._trainable is None:
            self._trainable = trainable_leaves(params, self.frozen)
        if self.fused_batches is None:
            self.fused_batches = self._auto_fused_batches(params, x, y)
        batches = split_physical_batches(indices, cfg.physical_batch_size, pad_index=pad_index)
        x_dev, y_dev = self._device_data(x, y)
        if self.placement is not None:  # no-op when already replicated (every step but the first)
            params, opt_state, noise_key = self.placement.replicate((params, opt_state, noise_key))
        step_arr = np.uint32(t)
        k, K = batches.count, self.fused_batches
        with precision_context(cfg.precision):
            if 0 < K and k <= K:  # the common case: one dispatch
                idx_buf = np.zeros((K, cfg.physical_batch_size), np.int32)
                mask_buf = np.zeros((K, cfg.physical_batch_size), bool)
                idx_buf[:k], mask_buf[:k] = batches.indices, batches.mask
                params, opt_state, out = self._fused(
                    params,
                    opt_state,
                    x_dev,
                    y_dev,
                    idx_buf,
                    mask_buf,
                    np.int32(k),
                    noise_key,
                    step_arr,
                )
            else:  # L > K·p (or K = 0): k + 2 dispatches, nothing truncated
                carry = self._init(params)
                for j, (idx, m) in enumerate(batches):
                    carry = self._accumulate(
                        carry, params, x_dev, y_dev, idx, m, noise_key, step_arr, np.int32(j)
                    )
                params, opt_state, out = self._finalize(
                    params, opt_state, carry, noise_key, step_arr
                )
        out = jax.device_get(out)  # the one device → host transfer of the step
        count = int(out["count"])
        stats = StepStats(
            batch_size=batches.batch_size,
            noise_std=cfg.noise_std,
            noise_draws=1,
            num_clipped=int(out["num_clipped"]),
            max_grad_norm=float(out["max_grad_norm"]),
            max_clipped_norm=float(out["max_clipped_norm"]),
            denominator=cfg.denominator,
            physical_batches=batches.count,
            update_sketch=tuple(float(v) for v in out["sketch"]),
            loss=float(out["loss_sum"]) / count if count else math.nan,
        )
        return params, opt_state, stats
