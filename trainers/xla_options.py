"""Per-compilation XLA options of the masked DP-SGD step (a speed setting, never the math).

XLA:CPU hands some fused computations to the YNNPACK library ("library
fusions"): by default matrix products *and* a class of reductions and
elementwise chains.  On the CPU models of this repository the library's
reductions are the slow part of ghost clipping: each per-example norm is a
product followed by a reduction over tokens (a LayerNorm's Σ_t g_t ⊙ x̂_t,
a Gram matrix's ⟨A Aᵀ, G Gᵀ⟩), and as library fusions these ran at about
10 ns per element on the tiny ViT at physical batch 128, where XLA's own
loop fusions take a fraction of that.  Restricting the library to matrix
products (``LIBRARY_FUSION_TYPE_DOT``) for the compiled step of a ghost
run made the bare ghost step 1.3–1.5× faster on that ViT (measured in one
process beside the default; docs/masked-dpsgd.md has the table).

The same restriction made the ``vmap`` step of the CNN 1.5–2× *slower*
(its convolutions' per-example gradients), so it is applied to ghost
clipping only, and only on the CPU backend.  It changes which kernels
compute the same products: results agree with the default compilation to
float32 rounding.

The option is experimental in XLA and may be renamed; :func:`step_options`
first compiles a one-line function with it and returns ``{}`` when this
jaxlib rejects it, so an XLA without the option runs the default.

The functions that accumulate physical batches (not the ones that add the
noise, update the parameters and compute the update sketch) also compile
without XLA's tree-reduction rewrite (``xla_disable_hlo_passes=
tree_reduction_rewriter``).  That pass splits every reduction over more
than 32 elements into a windowed reduction plus a second reduction, for
float accuracy of long sums; XLA:CPU runs each window as its own small
operation, unfused with what produces its input.  A ghost step has dozens
of such reductions over 64–256 elements (a LayerNorm's statistics, each
layer's per-example norm): on the benchmark ViT at p = 64 they were 63
separate operations, ~0.46 ms of the step's thread time.  Without the pass
the reductions fuse with their producers; the vectorised reduction loop
still keeps several partial sums, and the batch's long contractions (the
weight-gradient products over p·T rows) were never tree-reduced anyway.
The update sketch, whose sum runs over every parameter, keeps the pass.

The options are passed per function (``jax.jit(..., compiler_options=…)``):
they never change the process's ``XLA_FLAGS`` or any other computation.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "GHOST_CPU_ACCUMULATE_OPTIONS",
    "GHOST_CPU_OPTIONS",
    "accumulate_options",
    "step_options",
    "supported",
]

#: Options of the step's compilation under ghost clipping on XLA:CPU.
GHOST_CPU_OPTIONS: Mapping[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}

#: Extra options of the functions that accumulate physical batches (ghost, XLA:CPU).
GHOST_CPU_ACCUMULATE_OPTIONS: Mapping[str, str] = {
    "xla_disable_hlo_passes": "tree_reduction_rewriter",
}

_SUPPORTED: dict[tuple[tuple[str, str], ...], bool] = {}


def supported(options: Mapping[str, str]) -> bool:
    """Whether this jaxlib compiles a trivial function with ``options`` (cached)."""
    key = tuple(sorted((str(k), str(v)) for k, v in options.items()))
    if key not in _SUPPORTED:
        import jax
        import jax.numpy as jnp

        try:
            jax.jit(lambda a: a * 2.0, compiler_options=dict(key)).lower(
                jnp.zeros((2,), jnp.float32)
            ).compile()
            _SUPPORTED[key] = True
        except Exception:  # an unknown option or value: this XLA does not have it
            _SUPPORTED[key] = False
    return _SUPPORTED[key]


def step_options(clipping: str, backend: str) -> dict[str, str]:
    """The default per-compilation options of the step for a clipping method and backend.

    Args:
        clipping: ``"vmap"`` or ``"ghost"`` (the resolved method).
        backend: the JAX platform the step runs on (``"cpu"``, ``"gpu"``, ``"tpu"``).

    Returns:
        :data:`GHOST_CPU_OPTIONS` for ghost clipping on the CPU when this
        jaxlib accepts them; ``{}`` otherwise.
    """
    if clipping == "ghost" and backend == "cpu" and supported(GHOST_CPU_OPTIONS):
        return dict(GHOST_CPU_OPTIONS)
    return {}


def accumulate_options(clipping: str, backend: str) -> dict[str, str]:
    """The per-compilation options of the functions that accumulate physical batches.

    :func:`step_options` plus :data:`GHOST_CPU_ACCUMULATE_OPTIONS` for ghost
    clipping on the CPU when this jaxlib accepts them all; otherwise just
    :func:`step_options`.
    """
    base = step_options(clipping, backend)
    if base:
        both = {**base, **GHOST_CPU_ACCUMULATE_OPTIONS}
        if supported(both):
            return both
    return base
