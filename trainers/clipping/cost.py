"""Whole-method cost of vmap and ghost clipping, from XLA's own compile-time analysis.

``auto`` clipping (:mod:`trainers.clipping.select`) compares the two methods
as a whole, not layer by layer.  For one physical batch of p examples it
compiles (never runs) the part of the step where they differ — losses,
per-example norms, clip factors and the masked clipped sum — once by
``vmap(grad)`` and once by :class:`trainers.clipping.GhostClipping`, and reads
from each compiled function

* ``temp_size_in_bytes`` of ``Compiled.memory_analysis()``: the working
  memory XLA's buffer plan gives the method (arguments and outputs are the
  same for both: parameters and one batch in, one parameter-sized sum out);
* ``flops`` and ``bytes accessed`` of ``Compiled.cost_analysis()`` (reported,
  not used to decide).

The cheaper method is the one with the smaller working memory (ties go to
ghost).  On these CPU models memory traffic is also what the step's time
follows; a count of values by hand does not work: XLA fuses a Dense layer's
per-example outer products into the norm and the sum (vmap then holds far
less than P values per example), while ghost keeps every layer's output
gradient and a convolution's unfolded patches.  Measured choices
(docs/masked-dpsgd.md): vmap for the CNNs, ghost for the MLP, the ViTs and
the text transformer (whose per-example embedding-table gradient is V·D).

The analysis is deterministic for a given model, p, precision and XLA
version; it costs two compilations of that part of the step (seconds for the
models here) under ``auto`` on one device, once per process and computation
(keyed by the traced jaxprs).

References: Bu et al. 2022, "Scalable and Efficient Training of Large
Convolutional Neural Networks with Differential Privacy", arXiv:2205.10683
(ghost vs per-example gradient memory, layer by layer); here the comparison
is of the whole methods, as compiled.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

__all__ = ["MethodCost", "method_cost"]

_CACHE: dict[str, MethodCost] = {}

#: Physical batch the comparison is compiled at when the caller gives none.
DEFAULT_BATCH = 32


@dataclasses.dataclass(frozen=True)
class MethodCost:
    """XLA's working memory (bytes) and flops of one physical batch, by method."""

    batch: int
    vmap_bytes: int
    ghost_bytes: int
    vmap_flops: float | None = None
    ghost_flops: float | None = None

    @property
    def cheaper(self) -> str:
        """``"ghost"`` when its working memory is no larger than vmap's, else ``"vmap"``."""
        return "ghost" if self.ghost_bytes <= self.vmap_bytes else "vmap"

    def describe(self) -> str:
        """``working memory at p=32: ghost 1.2 MB, vmap 9.8 MB``."""
        return (
            f"working memory at p={self.batch}: ghost {_mb(self.ghost_bytes)}, "
            f"vmap {_mb(self.vmap_bytes)}"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"


def method_cost(
    *,
    model_apply: Callable[[Any, Any], Any],
    loss_fn: Callable[[Any, Any], Any],
    trainable: tuple[bool, ...],
    precision: str,
    params: Any,
    x_one: Any,
    ghost: Any,
    batch: int = DEFAULT_BATCH,
    y_one: Any = None,
) -> MethodCost:
    """:class:`MethodCost` of both methods for ``batch`` examples shaped like ``x_one``.

    Args:
        model_apply, loss_fn, trainable, precision: as for :class:`GhostClipping`.
        params: the parameters (only shapes and dtypes are used).
        x_one: one example without batch axis (array or ``jax.ShapeDtypeStruct``).
        ghost: the :class:`GhostClipping` whose plan covers the model.
        batch: the physical batch size p to compile at.
        y_one: one label (default: an int32 scalar class label).
    """
    import jax
    import jax.numpy as jnp

    from trainers.dp_math import _vmap_norms_and_sum, per_example_grads
    from trainers.precision import precision_context

    if y_one is None:
        y_one = jax.ShapeDtypeStruct((), jnp.int32)

    def batched(s):
        return jax.ShapeDtypeStruct((batch, *jnp.shape(s)), s.dtype)

    spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), a.dtype), params)
    xb, yb = batched(x_one), batched(y_one)

    def clip_and_sum(method):
        def fn(p, x, y):
            if method == "ghost":
                out = ghost(p, x, y)
                losses, norms, weighted_sum = out.losses, out.norms, out.weighted_sum
            else:
                losses, grads = per_example_grads(model_apply, loss_fn, precision, p, x, y)
                norms, weighted_sum = _vmap_norms_and_sum(grads, trainable, batch)
            keep = jnp.isfinite(norms) & jnp.isfinite(losses)
            factor = jnp.where(keep, 1.0 / jnp.maximum(norms, 1.0), 0.0)
            return weighted_sum(factor, keep), norms

        return fn

    found: dict[str, tuple[int, float | None]] = {}
    with precision_context(precision):
        # The jaxprs (cheap to trace) identify the computation: the same model,
        # loss, batch and precision seen again in this process is not recompiled.
        jaxprs = {m: str(jax.make_jaxpr(clip_and_sum(m))(spec, xb, yb)) for m in ("vmap", "ghost")}
        key = hashlib.sha256(
            "\0".join([precision, jaxprs["vmap"], jaxprs["ghost"]]).encode()
        ).hexdigest()
        if key in _CACHE:
            return _CACHE[key]
        for method in ("vmap", "ghost"):
            compiled = jax.jit(clip_and_sum(method)).lower(spec, xb, yb).compile()
            memory = compiled.memory_analysis()
            temp = int(memory.temp_size_in_bytes) if memory is not None else 0
            try:
                costs = compiled.cost_analysis()
                if isinstance(costs, list | tuple):
                    costs = costs[0] if costs else {}
                value = costs.get("flops") if costs else None
                flops = float(value) if value is not None else None
            except (NotImplementedError, RuntimeError, AttributeError, TypeError):  # optional
                flops = None
            found[method] = (temp, flops)
    cost = MethodCost(
        batch=batch,
        vmap_bytes=found["vmap"][0],
        ghost_bytes=found["ghost"][0],
        vmap_flops=found["vmap"][1],
        ghost_flops=found["ghost"][1],
    )
    _CACHE[key] = cost
    return cost
