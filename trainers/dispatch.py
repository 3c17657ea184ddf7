"""Dispatch policy of the masked DP-SGD step: how a logical step becomes compiled calls.

The math of the step lives in :mod:`trainers.dp_math`; device placement in
:mod:`trainers.sharding`.  This module decides how a logical step of k = ⌈L/p⌉
physical batches is run:

Normally the whole logical step is ONE call of one compiled function
(``fused``): the host writes the k physical batches into a fixed ``(K, p)``
index buffer and ``(K, p)`` mask and passes k as a runtime value;
``lax.fori_loop(0, k, …)`` (a ``while_loop``: rows k … K−1 are never computed
on) accumulates the first k rows, then the step is finalised in the same
function.  K is fixed per trainer, from the expected batch size D:
K = max(1, ⌈(D + 6·√D + 6)/p⌉) (L has std ≤ √D under Poisson sampling, so
P(L > K·p) is negligible).  When L > K·p (rare; never truncated) the step
falls back to three separately compiled functions, each compiled once:
``init``, ``accumulate`` called once per physical batch, ``finalize``
(k + 2 dispatches).

**Tail batches.**  Padding the last physical batch to p rows wastes, on
average, p/2 rows of computation per logical step: at E = 128 and p = 32
that is 11 % of the step.  On a single device the step therefore holds
smaller compiled shapes, the tail batches of p_t ∈ {⌊p/4⌋, ⌊p/2⌋} rows
(``tail_batch_size``; the zero sizes dropped): when the last physical batch
has r real rows (r = L − p·(k − 1)), it runs as the smallest tail batch with
p_t ≥ r, and as a padded full batch when none is that large.  A batch of p_t
rows never costs more than one of p rows, so the rule is a gain on any
device; the expected padding falls from p/2 to about 3p/16 rows (one tail
size ⌊p/2⌋ gives p/4).  In the fused function each tail size is one more
``fori_loop`` over 0 or 1 rows of a ``(1, p_t)`` buffer; on the k + 2 path
each is its own compiled function (``accumulate_tail_<p_t>``), compiled at
its first use.  Masking, noise and statistics are unchanged: a tail batch is
the last physical batch with fewer padding rows, and ``physical_batches`` is
still k = ⌈L/p⌉.  Both paths run the same traced code
(:func:`trainers.dp_math.accumulate_batch`, :func:`trainers.dp_math.finalize_step`),
so they agree up to float32 rounding.  By default a convolutional model on
XLA:CPU always takes the k + 2 path (K = 0): XLA:CPU runs convolutions
inside a loop body several times slower; so does a model whose physical
batch is heavy enough that dispatches cost nothing (:data:`HEAVY_BATCH_FLOPS`;
see ``MaskedDPSGD``'s ``fused_batches``).

Inside the loop, physical batch j's rows (gathered inputs, labels, mask)
reach the body through the loop state, gathered by iteration j − 1.  Had the
body gathered them itself, XLA would fuse the gather and its index
arithmetic (a dynamic slice of the index buffer) into every consumer of the
rows; on XLA:CPU such fusions are not vectorised (the text transformer's
attention softmax ran 7× slower inside the loop than in the k + 2 path's
``accumulate``).

The realised L never reaches the compiled code as a shape or a static value,
so each of the step's functions compiles at most once per run whatever the
batch sizes: ``compilations`` (the max over them) is 1.

References: Chua et al. 2024, "How Private are DP-SGD Implementations?"
(why Poisson sampling must not be truncated or replaced by shuffling).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_positive
from trainers.batching import split_physical_batches
from trainers.dp_math import (
    PRODUCTION,
    DPSGDConfig,
    Mechanics,
    StepStats,
    accumulate_batch,
    finalize_step,
    init_carry,
    merge_carries,
    per_example_grads,
    trainable_leaves,
)
from trainers.losses import LossFn, softmax_cross_entropy
from trainers.precision import precision_context
from trainers.prng import noise_context, wrap_noise_key
from trainers.sharding import data_parallel, jit_shardings

__all__ = [
    "HEAVY_BATCH_FLOPS",
    "MaskedDPSGD",
    "PendingStats",
    "default_fused_batches",
    "stream_devices",
]

#: On XLA:CPU a physical batch whose gradient's matrix products take at least
#: this many floating-point operations (:func:`trainers.jaxpr_cost.matmul_flops`
#: of one example times p) runs on the k + 2 path.  Such a batch takes about a
#: millisecond or more on a CPU core, so the k + 1 extra dispatches (about
#: 50 µs each, measured on the digits MLP) cost a few percent at most, while
#: the loop body ran 8–14 % slower than separate calls (text transformer and
#: ViT of ``benchmarks/throughput.py``; docs/masked-dpsgd.md).  The digits MLP
#: (about 2·10⁴ per example) stays far below it, the benchmark's text
#: transformer (3·10⁷ per example) far above.
HEAVY_BATCH_FLOPS = 5e7


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


def stream_devices(streams: int | None, *, data_parallel: bool = False) -> tuple[Any, ...]:
    """The first S local devices for ``MaskedDPSGD(streams=S)`` (empty for ``None`` or 1).

    One-line :class:`~dpverify.errors.InvalidArgument` for S < 1, for streams
    with a data-parallel trainer, and for fewer than S local devices (the
    message names the XLA flag that makes S CPU devices).
    """
    from dpverify.errors import InvalidArgument

    if streams is None:
        return ()
    count = check_int("streams", streams, minimum=1)
    if count == 1:
        return ()
    if data_parallel:
        raise InvalidArgument(f"streams={streams} needs a single-device trainer (not devices)")
    import jax

    local = jax.local_devices()
    if len(local) < count:
        raise InvalidArgument(
            f"streams={streams} needs {count} local devices, this process has {len(local)} "
            f"(on the CPU: XLA_FLAGS=--xla_force_host_platform_device_count={count})"
        )
    return tuple(local[:count])


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
            the model contains a convolution (XLA:CPU runs a loop body
            containing convolutions 3–11× slower than the same body compiled
            as its own function) or when one physical batch's matrix
            products take at least :data:`HEAVY_BATCH_FLOPS` (the loop body
            then ran 8–14 % slower, and dispatches cost nothing): then K = 0.
            Measured in ``docs/masked-dpsgd.md``.  A larger K costs only a
            larger index buffer per step, never computation.
        tail_batch_size: the tail batch sizes p_t, an int or a sequence of
            ints: the last physical batch, holding r real rows, runs as the
            smallest tail batch with p_t ≥ r (module docstring); 0 (or an
            empty sequence) disables them, and each p_t must be below p.
            ``None`` (default): ⌊p/4⌋ and ⌊p/2⌋ (those above 0) on a single
            device, none when data-parallel (``devices``).
        streams: ``None`` or 1 (off), or S ≥ 2: deal the physical batches of
            each logical step round-robin to the first S local devices, each
            accumulating its own sum concurrently (no collective per batch),
            then add the S sums on the first device, which adds the noise and
            updates once (:func:`~trainers.dp_math.merge_carries`).  The same
            update as one device up to float32 summation order, with each of
            the step's functions traced once and compiled once per device.
            On XLA:CPU, where a small model's step gains little from a second
            thread, S CPU devices (``XLA_FLAGS=
            --xla_force_host_platform_device_count=S``) run S batches at once
            on S cores.  Uses the k + 2 path (``fused_batches`` must be 0 or
            ``None``) and a single-device trainer (not with ``devices``).
        mechanics: the :class:`~trainers.dp_math.Mechanics` composition
            (default: ``PRODUCTION``, or the one of ``config.mutation``).
        compiler_options: per-compilation XLA options of the step's functions
            (``jax.jit(compiler_options=…)``; they never touch ``XLA_FLAGS``).
            ``None`` (default): :func:`trainers.xla_options.step_options` for
            the resolved clipping method and backend (on XLA:CPU under ghost
            clipping: matrix products only as library fusions, and no tree
            rewrite of the batch functions' reductions, measured faster);
            ``{}``: XLA's defaults.  Given options apply to every function;
            options this XLA rejects are an error at the first step.

    Attributes:
        compilations: how many times the step was traced (compiled): the
            maximum over its compiled functions; 1 for a healthy run.
        trace_counts: per compiled function trace counts (``fused``, and
            ``init``/``accumulate``/``accumulate_tail_<p_t>``/``finalize`` of
            the fallback path, which stay 0 until some L > K·p).
        fused_batches: K (``None`` until the first step when chosen automatically).
        tail_batch_sizes: the tail batch sizes, ascending (empty: none).
        tail_batch_size: the largest of them (0: no tail batch).
        clipping: ``"vmap"`` or ``"ghost"``, what ``config.clipping`` resolved
            to (``None`` until the first step or :meth:`resolve_clipping`);
            ``clipping_reason`` says why in one line.
        placement: the :class:`trainers.sharding.DataParallel` placement, or
            ``None`` on a single device.
        compiler_options: the XLA options the step compiles with (``None``
            until the clipping method is resolved; ``{}``: XLA's defaults).
        accumulate_compiler_options: those of the functions that accumulate
            one physical batch (``accumulate``, ``accumulate_tail_<p_t>``):
            by default :func:`trainers.xla_options.accumulate_options`, else
            the ``compiler_options`` given.
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
        tail_batch_size: int | None = None,
        mechanics: Mechanics | None = None,
        compiler_options: Mapping[str, str] | None = None,
        streams: int | None = None,
    ) -> None:
        if not isinstance(config, DPSGDConfig):
            from dpverify.errors import InvalidArgument

            raise InvalidArgument(f"config={config!r} must be a DPSGDConfig")
        self.model_apply = model_apply
        self.optimizer = optimizer
        self.config = config
        self.frozen = frozen
        self.loss_fn = loss_fn
        if mechanics is None:
            mechanics = PRODUCTION
            if config.mutation is not None:  # testing only: a deliberately wrong composition
                from trainers.mutations import mechanics_for

                mechanics = mechanics_for(config.mutation)
        self.mechanics = mechanics
        self._trainable: tuple[bool, ...] | None = None
        self.clipping: str | None = None
        self.clipping_reason: str | None = None
        self._ghost: Any = None
        self._data: tuple[Any, Any, Any, Any] | None = None
        self.fused_batches: int | None = (
            None if fused_batches is None else check_int("fused_batches", fused_batches, minimum=0)
        )
        self.placement = data_parallel(devices, physical_batch_size=config.physical_batch_size)
        self.tail_batch_sizes = self._tail_sizes(tail_batch_size)
        self.tail_batch_size = max(self.tail_batch_sizes, default=0)
        self.trace_counts = {
            "fused": 0,
            "init": 0,
            "accumulate": 0,
            **{f"accumulate_tail_{pt}": 0 for pt in self.tail_batch_sizes},
            "finalize": 0,
        }
        self._streams = self._stream_devices(streams)
        self._streamed: tuple[Any, list] | None = None
        if self._streams:
            self.fused_batches = 0
        self._donate = donate
        self._requested_options: dict[str, str] | None = None
        if compiler_options is not None:
            if not isinstance(compiler_options, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in compiler_options.items()
            ):
                from dpverify.errors import InvalidArgument

                raise InvalidArgument(
                    f"compiler_options={compiler_options!r} must map option names to strings"
                )
            self._requested_options = dict(compiler_options)
        self.compiler_options: dict[str, str] | None = None
        self.accumulate_compiler_options: dict[str, str] | None = None
        self._make_functions({})

    def _tail_sizes(self, requested: int | Any) -> tuple[int, ...]:
        """The validated tail batch sizes, ascending (see ``tail_batch_size``)."""
        from dpverify.errors import InvalidArgument

        p = self.config.physical_batch_size
        if requested is None:
            return () if self.placement is not None else tuple(sorted({p // 4, p // 2} - {0}))
        values = [requested] if isinstance(requested, int | np.integer) else list(requested)
        sizes = [check_int("tail_batch_size", v, minimum=0) for v in values]
        for pt in sizes:
            if pt >= p:
                raise InvalidArgument(
                    f"tail_batch_size={requested} must be below physical_batch_size={p}"
                )
        sizes = sorted(set(sizes) - {0})
        if sizes and self.placement is not None:
            raise InvalidArgument(
                f"tail_batch_size={requested} needs a single device (use 0 with devices)"
            )
        return tuple(sizes)

    def tail_for(self, batch_size: int) -> int:
        """The rows of the batch that the last physical batch of a logical batch of
        ``batch_size`` examples runs as: the smallest tail batch size p_t ≥ r
        (r = L − p·(k − 1) real rows), or 0 when it runs as a full batch of p
        rows (or L = 0)."""
        p = self.config.physical_batch_size
        if batch_size <= 0:
            return 0
        r = batch_size - p * ((batch_size - 1) // p)
        return next((pt for pt in self.tail_batch_sizes if r <= pt), 0)

    def _stream_devices(self, streams: int | None) -> tuple[Any, ...]:
        """The S local devices of ``streams`` (empty when off); one-line errors."""
        from dpverify.errors import InvalidArgument

        wanted = streams is not None and check_int("streams", streams, minimum=1) > 1
        if wanted and self.placement is None and self.fused_batches:
            raise InvalidArgument(
                f"streams={streams} runs the k + 2 path; fused_batches={self.fused_batches} "
                "must be 0 or None"
            )
        return stream_devices(streams, data_parallel=self.placement is not None)

    @property
    def stream_count(self) -> int:
        """S, the devices physical batches are dealt to (1 when ``streams`` is off)."""
        return max(1, len(self._streams))

    def _make_functions(
        self, options: dict[str, str], accumulate: dict[str, str] | None = None
    ) -> None:
        """(Re)wrap the step's compiled functions with per-compilation XLA ``options``
        (``accumulate``, default the same, for the functions that accumulate one
        physical batch), before their first call: nothing compiled is thrown away."""
        import jax

        shard = jit_shardings(self.placement)
        donate = self._donate
        co = dict(options) or None
        acc = dict(options if accumulate is None else accumulate) or None
        self._fused = jax.jit(
            self._fused_impl,
            donate_argnums=(0, 1) if donate else (),
            compiler_options=co,
            **shard["fused"],
        )
        self._init = jax.jit(self._init_impl, compiler_options=co, **shard["init"])
        self._accumulate = jax.jit(
            self._accumulate_impl, donate_argnums=(0,), compiler_options=acc, **shard["accumulate"]
        )
        self._accumulate_tails = {
            pt: jax.jit(
                functools.partial(self._accumulate_tail_impl, f"accumulate_tail_{pt}"),
                donate_argnums=(0,),
                compiler_options=acc,
            )
            for pt in self.tail_batch_sizes
        }
        self._merge = jax.jit(merge_carries, donate_argnums=(0, 1), compiler_options=co)
        self._finalize = jax.jit(
            self._finalize_impl,
            donate_argnums=(0, 1) if donate else (),
            compiler_options=co,
            **shard["finalize"],
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
            name: int(fn._cache_size())  # type: ignore[attr-defined]  # jax private API
            for name, fn in (
                ("fused", self._fused),
                ("init", self._init),
                ("accumulate", self._accumulate),
                *((f"accumulate_tail_{pt}", fn) for pt, fn in self._accumulate_tails.items()),
                ("finalize", self._finalize),
            )
        }

    # -- compiled pieces ---------------------------------------------------------

    def _fused_impl(
        self,
        params,
        opt_state,
        x_all,
        y_all,
        idx_buf,
        mask_buf,
        count,
        noise_key,
        step,
        extra=None,
        tails=(),
    ):
        """The whole logical step: the first ``count`` rows of the buffers, then
        for each tail batch size ``(idx (1, p_t), mask (1, p_t), tail_count ∈ {0, 1})``
        (at most one of them with count 1), then finalize."""
        import jax

        self.trace_counts["fused"] += 1

        import jax.numpy as jnp

        last = idx_buf.shape[0] - 1

        def rows(j):  # physical batch j's inputs, labels and mask
            xb, yb = self._gather(x_all, y_all, idx_buf[j])
            return xb, yb, mask_buf[j]

        def body(j, state):
            # Batch j's rows arrive through the loop state, gathered by the previous
            # iteration: XLA cannot fuse the gather and the index arithmetic into
            # every consumer of the rows (on XLA:CPU such a fusion is not
            # vectorised: the attention softmax of the text transformer ran 7x
            # slower inside the loop than outside it).
            carry, (xb, yb, mask) = state
            ahead = rows(jnp.minimum(j + 1, last))  # unused after the last row
            carry = self._accumulate_rows(carry, params, xb, yb, mask, noise_key, step, j)
            return carry, ahead

        carry, _ = jax.lax.fori_loop(
            0, count, body, (self._init_body(params, extra), rows(jnp.int32(0)))
        )
        for tail_idx, tail_mask, tail_count in tails:
            tail_x, tail_y = self._gather(x_all, y_all, tail_idx[0])

            def tail_body(j, carry, xb=tail_x, yb=tail_y, mask=tail_mask[0]):
                return self._accumulate_rows(carry, params, xb, yb, mask, noise_key, step, count)

            carry = jax.lax.fori_loop(0, tail_count, tail_body, carry)
        return self._finalize_body(params, opt_state, carry, noise_key, step)

    def _init_impl(self, params, extra=None):
        self.trace_counts["init"] += 1
        return self._init_body(params, extra)

    def _accumulate_impl(self, carry, params, x_all, y_all, idx, mask, noise_key, step, batch):
        self.trace_counts["accumulate"] += 1
        return self._accumulate_body(carry, params, x_all, y_all, idx, mask, noise_key, step, batch)

    def _accumulate_tail_impl(
        self, name, carry, params, x_all, y_all, idx, mask, noise_key, step, batch
    ):  # fmt: skip
        self.trace_counts[name] += 1
        return self._accumulate_body(carry, params, x_all, y_all, idx, mask, noise_key, step, batch)

    def _finalize_impl(self, params, opt_state, carry, noise_key, step):
        self.trace_counts["finalize"] += 1
        return self._finalize_body(params, opt_state, carry, noise_key, step)

    def _init_body(self, params, extra=None):
        carry = init_carry(params)
        if extra is not None:  # clipped sum the host adds itself (canaries), before the noise
            import jax
            import jax.numpy as jnp

            carry["sum"] = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), extra)
        return carry

    def precompile(
        self, params: Any, opt_state: Any, x: Any, y: Any, *, extra_sum: Any = None
    ) -> None:
        """Compile, now, every function a step of this trainer normally calls.

        Functions compile at their first call, and on the k + 2 path each tail
        batch size and each stream device first comes up at some later step
        (a stall of seconds there, in the middle of a timed loop).  This runs
        one step for each last-batch shape (every tail size and the full
        batch) and each stream device, on copies of ``params`` and
        ``opt_state`` with a throwaway noise key, and discards the results:
        nothing of it reaches the arguments, and nothing is released.  The
        overflow path (L > K·p with K > 0) still compiles at its first use.
        Pass ``extra_sum`` when the run's steps pass one (one compilation).
        """
        import jax
        import jax.numpy as jnp

        p = self.config.physical_batch_size
        n = int(np.shape(x)[0])
        key = jax.random.key(0)  # throwaway: the results are discarded
        for k in range(1, max(1, len(self._streams)) + 1):  # last batch on device (k−1) mod S
            for last in (*self.tail_batch_sizes, p):
                size = min(n, p * (k - 1) + last)
                params_copy, state_copy = jax.tree_util.tree_map(jnp.copy, (params, opt_state))
                out = self.step_async(
                    params_copy, state_copy, x, y, np.arange(size), key, 0, extra_sum=extra_sum
                )
                jax.block_until_ready(out[:2])
                out[2].result()

    def resolve_clipping(self, params: Any, x: Any, y: Any = None) -> str:
        """Decide ``config.clipping`` for these parameters and inputs (once; under ``auto``
        two compilations of the clipping part, :mod:`trainers.clipping.cost`).

        Sets :attr:`clipping` (``"vmap"`` or ``"ghost"``) and
        :attr:`clipping_reason` (one line saying why); the first :meth:`step`
        calls it.  Raises :class:`trainers.clipping.UnsupportedLayer` for
        ``clipping="ghost"`` with a trainable layer that has no ghost rule.
        """
        import jax

        from trainers.clipping.select import resolve_clipping

        if self.clipping is None:
            if self._trainable is None:
                self._trainable = trainable_leaves(params, self.frozen)
            x0 = x[0]
            y0 = None if y is None else y[0]
            method, ghost, reason = resolve_clipping(
                self.config.clipping,
                model_apply=self.model_apply,
                loss_fn=self.loss_fn,
                trainable=self._trainable,
                precision=self.config.precision,
                params=params,
                x_one=jax.ShapeDtypeStruct(x0.shape, x0.dtype),
                devices=self.device_count,
                physical_batch_size=self.config.physical_batch_size,
                y_one=None if y0 is None else jax.ShapeDtypeStruct(y0.shape, y0.dtype),
            )
            self._ghost, self.clipping, self.clipping_reason = ghost, method, reason
            self._resolve_compiler_options(method)
        return self.clipping

    def _platform(self) -> str:
        """The JAX platform the step runs on (``"cpu"``, ``"gpu"``, …)."""
        import jax

        return (
            jax.default_backend() if self.placement is None else self.placement.devices[0].platform
        )

    def _resolve_compiler_options(self, method: str) -> None:
        """Set :attr:`compiler_options` for the resolved clipping method, and rewrap."""
        import jax

        from trainers.xla_options import accumulate_options, step_options, supported

        if self._requested_options is None:
            options = step_options(method, self._platform())
            accumulate = accumulate_options(method, self._platform())
        else:
            options = self._requested_options
            if options and not supported(options):
                from dpverify.errors import InvalidArgument

                raise InvalidArgument(
                    f"compiler_options={options!r} are not accepted by this XLA "
                    f"(jax {jax.__version__})"
                )
            accumulate = options
        self.compiler_options = dict(options)
        self.accumulate_compiler_options = dict(accumulate)
        if options or accumulate:
            self._make_functions(options, accumulate)

    def _per_example_grads(self, params, xb, yb):
        if self._ghost is not None:  # ghost norms + book-keeping (trainers.clipping)
            ghost_pass = self._ghost(params, xb, yb)
            return ghost_pass.losses, ghost_pass

        def grads(p, x, y):
            return per_example_grads(self.model_apply, self.loss_fn, self.config.precision, p, x, y)

        placement = self.placement
        if placement is not None and xb.shape[0] % placement.count == 0:  # rows stay local
            return placement.per_row(grads, params, xb, yb)
        return grads(params, xb, yb)

    def _gather(self, x_all, y_all, idx):
        """The rows ``idx`` of the data set, placed on their devices."""
        import jax.numpy as jnp

        xb = jnp.take(x_all, idx, axis=0)
        yb = jnp.take(y_all, idx, axis=0)
        if self.placement is not None:  # per-example work stays on the row's device
            xb, yb = self.placement.constrain_batch(xb), self.placement.constrain_batch(yb)
        return xb, yb

    def _accumulate_body(self, carry, params, x_all, y_all, idx, mask, noise_key, step, batch):
        xb, yb = self._gather(x_all, y_all, idx)
        return self._accumulate_rows(carry, params, xb, yb, mask, noise_key, step, batch)

    def _accumulate_rows(self, carry, params, xb, yb, mask, noise_key, step, batch):
        losses, grads = self._per_example_grads(params, xb, yb)
        return accumulate_batch(
            self.mechanics,
            self.config,
            self._trainable,
            carry,
            losses,
            grads,
            mask,
            noise_key,
            step,
            batch,
        )

    def _finalize_body(self, params, opt_state, carry, noise_key, step):
        return finalize_step(
            self.mechanics,
            self.config,
            self._trainable,
            self.optimizer,
            params,
            opt_state,
            carry,
            noise_key,
            step,
        )

    # -- host side ---------------------------------------------------------------

    def _auto_fused_batches(self, params: Any, x: Any, y: Any) -> int:
        """K for ``fused_batches=None``: 0 on XLA:CPU for a convolutional model or a heavy
        physical batch (:data:`HEAVY_BATCH_FLOPS`), else :func:`default_fused_batches`."""
        import jax

        from trainers.jaxpr_cost import matmul_flops, uses_convolution

        cfg = self.config
        if self._platform() == "cpu":
            # A trace of one example's gradient (no compilation, not counted).
            jaxpr = jax.make_jaxpr(lambda *a: self._per_example_grads(*a)[0])(params, x[:1], y[:1])
            if uses_convolution(jaxpr):
                return 0
            if matmul_flops(jaxpr) * cfg.physical_batch_size >= HEAVY_BATCH_FLOPS:
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

    def _streamed_step(
        self, params, opt_state, x, y, batches, tail, noise_key, step_arr, extra_sum
    ) -> tuple[Any, Any, Any]:
        """The k + 2 path with physical batch j accumulated on device j mod S.

        Each device starts its own accumulator (the canaries' ``extra_sum`` on
        the first only, zeros of its shape on the others, so ``init`` traces
        once), and the calls are dispatched without waiting, so the devices
        run concurrently.  The accumulators are then moved to the first
        device and merged there, where the step is finalised once: one noise
        draw, one update, as on one device.
        """
        import jax
        import jax.numpy as jnp

        devs = self._streams
        data = self._stream_data(x, y)
        params = jax.device_put(params, devs[0])
        opt_state = jax.device_put(opt_state, devs[0])
        on = [params] + [jax.device_put(params, d) for d in devs[1:]]
        keys = [jax.device_put(noise_key, d) for d in devs]
        carries = []
        for i, d in enumerate(devs):
            extra = extra_sum
            if extra is not None:
                extra = extra if i == 0 else jax.tree_util.tree_map(jnp.zeros_like, extra)
                extra = jax.device_put(extra, d)
            # Committed to its device: init's zeros come back uncommitted, and a carry
            # that is committed at one call and not at the next compiles again.
            carries.append(jax.device_put(self._init(on[i], extra), d))
        carries = self._accumulate_batches(carries, on, data, keys, batches, tail, step_arr)
        carry = carries[0]
        for other in carries[1:]:
            carry = self._merge(carry, jax.device_put(other, devs[0]))
        return self._finalize(params, opt_state, carry, keys[0], step_arr)

    def _accumulate_batches(
        self, carries, params, data, keys, batches, tail, step_arr
    ) -> list[Any]:
        """The k + 2 path's accumulation: physical batch j goes into accumulator
        j mod S (S = ``len(carries)``; 1 unless ``streams``), with that slot's
        parameters, ``(x, y)`` and noise key; the last batch runs as the tail
        batch of ``tail`` rows when ``tail`` > 0.  Dispatched without waiting;
        returns the S accumulators."""
        carries = list(carries)
        last = batches.count - 1
        for j, (idx, m) in enumerate(batches):
            i = j % len(carries)
            xd, yd = data[i]
            if tail and j == last:  # the tail batch
                carries[i] = self._accumulate_tails[tail](
                    carries[i], params[i], xd, yd, idx[:tail], m[:tail], keys[i], step_arr,
                    np.int32(j),
                )  # fmt: skip
                continue
            if self.placement is not None:
                idx, m = self.placement.rows((idx, m))
            carries[i] = self._accumulate(
                carries[i], params[i], xd, yd, idx, m, keys[i], step_arr, np.int32(j)
            )
        return carries

    def _stream_data(self, x: Any, y: Any) -> list[tuple[Any, Any]]:
        """``(x, y)`` on every stream device, copied once per data set."""
        import jax

        x_dev, y_dev = self._device_data(x, y)
        if self._streamed is not None and self._streamed[0] is x_dev:
            return self._streamed[1]
        copies = [jax.device_put((x_dev, y_dev), d) for d in self._streams]
        self._streamed = (x_dev, copies)
        return copies

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
        extra_sum: Any = None,
    ) -> tuple[Any, Any, StepStats]:
        """Run logical step ``step``; :meth:`step_async` followed by its
        :meth:`PendingStats.result` (the arguments and return value are those of
        :meth:`step_async`, with the statistics fetched)."""
        params, opt_state, pending = self.step_async(
            params, opt_state, x, y, indices, noise_key, step,
            pad_index=pad_index, extra_sum=extra_sum,
        )  # fmt: skip
        return params, opt_state, pending.result()

    def step_async(
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
        extra_sum: Any = None,
    ) -> tuple[Any, Any, PendingStats]:
        """Dispatch logical step ``step`` on the examples ``indices`` of ``(x, y)``.

        Returns as soon as the step's calls are queued: the new parameters are
        device arrays still being computed, and the statistics stay on the
        device until :meth:`PendingStats.result` fetches them (the step's one
        device → host transfer, which waits for the step).  A caller may so
        sample and dispatch step t + 1 before recording step t, and the host's
        work overlaps the device's (:mod:`trainers.loop` does).  The math and
        the compiled functions are those of :meth:`step`.

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
            extra_sum: a pytree like ``params`` that starts the clipped sum
                (so it is noised and divided like the examples' clipped
                gradients): the sampled canaries of :mod:`trainers.canaries`.
                Pass it at every step of a run or at none (one compilation).

        Returns:
            ``(new_params, new_opt_state, PendingStats)``.
        """

        t = check_int("step", step, minimum=0)
        cfg = self.config
        if self._trainable is None:
            self._trainable = trainable_leaves(params, self.frozen)
        if self.clipping is None:
            self.resolve_clipping(params, x, y)
        if self.fused_batches is None:
            self.fused_batches = self._auto_fused_batches(params, x, y)
        batches = split_physical_batches(indices, cfg.physical_batch_size, pad_index=pad_index)
        noise_key = wrap_noise_key(noise_key)  # pinned implementation, whatever the default
        x_dev, y_dev = self._device_data(x, y)
        if self.placement is not None:  # no-op when already replicated (every step but the first)
            params, opt_state, noise_key = self.placement.replicate((params, opt_state, noise_key))
        step_arr = np.uint32(t)
        k, K, p = batches.count, self.fused_batches, cfg.physical_batch_size
        # The last physical batch runs as the smallest tail batch it fits in, if any.
        tail = self.tail_for(batches.batch_size)
        full = k - 1 if tail else k
        with precision_context(cfg.precision), noise_context():
            if 0 < K and k <= K:  # the common case: one dispatch
                idx_buf = np.zeros((K, p), np.int32)
                mask_buf = np.zeros((K, p), bool)
                idx_buf[:full], mask_buf[:full] = batches.indices[:full], batches.mask[:full]
                if self.placement is not None:  # global arrays across processes
                    idx_buf, mask_buf = self.placement.rows((idx_buf, mask_buf), axis=1)
                tails = []
                for pt in self.tail_batch_sizes:
                    tail_idx = np.zeros((1, pt), np.int32)
                    tail_mask = np.zeros((1, pt), bool)
                    if pt == tail:
                        tail_idx[0] = batches.indices[k - 1, :pt]
                        tail_mask[0] = batches.mask[k - 1, :pt]
                    tails.append((tail_idx, tail_mask, np.int32(1 if pt == tail else 0)))
                params, opt_state, out = self._fused(
                    params,
                    opt_state,
                    x_dev,
                    y_dev,
                    idx_buf,
                    mask_buf,
                    np.int32(full),
                    noise_key,
                    step_arr,
                    extra_sum,
                    *((tuple(tails),) if tails else ()),
                )
            elif self._streams:  # k + 2 dispatches, batches dealt to S devices
                params, opt_state, out = self._streamed_step(
                    params, opt_state, x, y, batches, tail, noise_key, step_arr, extra_sum
                )
            else:  # L > K·p (or K = 0): k + 2 dispatches, nothing truncated
                (carry,) = self._accumulate_batches(
                    [self._init(params, extra_sum)],
                    [params],
                    [(x_dev, y_dev)],
                    [noise_key],
                    batches,
                    tail,
                    step_arr,
                )
                params, opt_state, out = self._finalize(
                    params, opt_state, carry, noise_key, step_arr
                )
        return params, opt_state, PendingStats(out, batches.batch_size, batches.count, cfg)


class PendingStats:
    """The statistics of a dispatched step, fetched from the device on first use.

    :meth:`result` makes the step's one device → host transfer (waiting for
    the step to finish, and raising the step's error if it failed) and
    returns the :class:`~trainers.dp_math.StepStats`; later calls return the
    same object.
    """

    def __init__(self, out: Any, batch_size: int, physical_batches: int, config: DPSGDConfig):
        self._out = out
        self._batch_size = batch_size
        self._physical_batches = physical_batches
        self._config = config
        self._stats: StepStats | None = None

    def result(self) -> StepStats:
        """The step's :class:`~trainers.dp_math.StepStats` (waits for the step)."""
        if self._stats is None:
            import jax

            out = jax.device_get(self._out)  # the one device → host transfer of the step
            count = int(out["count"])
            cfg = self._config
            self._stats = StepStats(
                batch_size=self._batch_size,
                noise_std=cfg.noise_std,
                noise_draws=1,
                num_clipped=int(out["num_clipped"]),
                num_nonfinite=int(out["num_nonfinite"]),
                max_grad_norm=float(out["max_grad_norm"]),
                max_clipped_norm=float(out["max_clipped_norm"]),
                denominator=cfg.denominator,
                physical_batches=self._physical_batches,
                update_sketch=tuple(float(v) for v in out["sketch"]),
                loss=float(out["loss_sum"]) / count if count else math.nan,
            )
            self._out = None
        return self._stats
