"""Per-layer rules of ghost clipping: per-example squared gradient norms from
a layer's per-example input a_i and output gradient g_i = ∂ℓ_i/∂(output) (private).

Every rule takes the stacked per-example input ``a`` (``(p, …)``, the layer's
input for each example as the model saw it) and output gradient ``g``
(``(p, …)``) and returns float32 ``(p,)`` squared norms of the gradient of
the layer's *trainable* parameters.  The per-example gradients themselves
are never formed, except by the ``direct`` rules, which form them one layer
at a time (a ``(p, d_in, d_out)`` array for a linear layer, ``(p, |θ|)`` for
a normalisation layer).

Linear map on a sequence (Dense, DenseGeneral, and Conv after unfolding):
with A_i ∈ R^{T×d_in} the example's T input rows (tokens, or unfolded conv
patches) and G_i ∈ R^{T×d_out} its output gradients, the kernel gradient is
A_iᵀG_i and the bias gradient is 1ᵀG_i, so

* ghost (Gram) norm: ‖A_iᵀG_i‖²_F = ⟨A_iA_iᵀ, G_iG_iᵀ⟩_F, cost ≈ T²(d_in + d_out)
  multiply-adds and 2T² memory per example (Li et al. 2022, "Large Language
  Models Can Be Strong Differentially Private Learners", arXiv:2110.05679);
  for T = 1 it is ‖a_i‖²·‖g_i‖² (Goodfellow 2015, arXiv:1510.01799);
* direct: form A_iᵀG_i, cost ≈ T·d_in·d_out and d_in·d_out memory per example;

and :func:`linear_method` picks the cheaper by that count ("mixed ghost
clipping", Bu et al. 2022, arXiv:2205.10683, which compares 2T² with
d_in·d_out, i.e. memory; here multiply-adds decide, memory follows).

Conv: a convolution is a linear map applied to each unfolded patch of the
input (the im2col equivalence), so A_i is the example's patches matrix
(what ``lax.conv_general_dilated_patches`` computes with the layer's
strides, padding and dilations; :func:`conv_patches` cuts it by slicing) and
T the number of output positions.  A grouped convolution (``feature_group_count`` G) maps the j-th block of
C_in/G input channels to the j-th block of C_out/G outputs only; its kernel
gradient is the G blocks A_ijᵀG_ij, so ‖·‖² = Σ_j ‖A_ijᵀG_ij‖² with d_in and
d_out counted per group (a depthwise convolution: d_in = ∏kernel, d_out = 1).

Embedding: the gradient of row v of the table is Σ_{t: id_t = v} g_t, so
‖·‖² = Σ_{t,s} [id_t = id_s]·⟨g_t, g_s⟩ (tokens sharing an id add up first).

Anything else (LayerNorm, GroupNorm scale and bias): ``direct`` — the
per-example gradient of the layer's own few parameters by ``vmap`` of the
layer's vector-Jacobian product at (a_i, g_i).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "conv_chunk",
    "conv_patches",
    "direct_grads",
    "embed_sq_norms",
    "grads_sq_norms",
    "linear_method",
    "linear_sq_norms",
    "map_in_chunks",
]


def linear_method(tokens: int, d_in: int, d_out: int) -> str:
    """``"ghost"`` or ``"direct"``: the cheaper way to get ‖A_iᵀG_i‖² per example.

    Ghost costs T²(d_in + d_out) multiply-adds, direct T·d_in·d_out; ties go
    to ghost (it also needs less memory then).  T = 1 is always ghost
    (‖a‖²·‖g‖², d_in + d_out).
    """
    if tokens <= 1:
        return "ghost"
    return "ghost" if tokens * (d_in + d_out) <= d_in * d_out else "direct"


def linear_sq_norms(
    a: Any, g: Any, *, kernel: bool, bias: bool, method: str, groups: int = 1
) -> Any:
    """Squared per-example norms of a linear layer's kernel and/or bias gradient.

    Args:
        a: ``(p, T, groups·d_in)`` inputs (tokens or patches) per example.
        g: ``(p, T, groups·d_out)`` output gradients per example.
        kernel: include the kernel gradient A_iᵀG_i.
        bias: include the bias gradient 1ᵀG_i.
        method: ``"ghost"`` (Gram matrices) or ``"direct"`` (form A_iᵀG_i).
        groups: a grouped convolution's ``feature_group_count``: group j maps
            the j-th block of d_in input columns to the j-th block of d_out
            output columns only, so its kernel gradient is A_ijᵀG_ij and
            ‖∇kernel‖² = Σ_j ‖A_ijᵀG_ij‖² (each by ``method``).
    """
    import jax
    import jax.numpy as jnp

    a = a.astype(jnp.float32)
    g = g.astype(jnp.float32)
    if kernel and groups == 1 and bias and method == "ghost":  # one reduction for both
        return _kernel_sq_norms(a, g, method, with_bias=True)
    p, tokens = g.shape[0], g.shape[1]
    sq = jnp.zeros((p,), jnp.float32)
    if kernel and groups == 1:
        sq = sq + _kernel_sq_norms(a, g, method)
    elif kernel:  # the groups' norms add; each group by the ungrouped rule
        ag = a.reshape((p, tokens, groups, -1))
        gg = g.reshape((p, tokens, groups, -1))
        per_group = jax.vmap(_kernel_sq_norms, in_axes=(2, 2, None))(ag, gg, method)
        sq = sq + jnp.sum(per_group, axis=0)
    if bias:
        sq = sq + jnp.sum(jnp.square(jnp.sum(g, axis=1)), axis=1)
    return sq


def _kernel_sq_norms(a: Any, g: Any, method: str, with_bias: bool = False) -> Any:
    """‖A_iᵀG_i‖² per example for ``(p, T, d_in)`` inputs and ``(p, T, d_out)`` output
    gradients, by ``method``.  (No group axis here: with one, XLA planned 9.4 MB
    more for the benchmark ViT's step at p = 256.)

    ``with_bias`` (ghost only) adds the bias gradient's ‖1ᵀG_i‖² in the same
    reduction: the kernel and bias gradients together are [A_i | 1]ᵀG_i, whose
    squared norm is ⟨A_iA_iᵀ + 11ᵀ, G_iG_iᵀ⟩ (for T = 1: (‖a_i‖² + 1)·‖g_i‖²).
    """
    import jax.numpy as jnp
    from jax import lax

    hi = lax.Precision.HIGHEST
    one = 1.0 if with_bias else 0.0
    if g.shape[1] == 1:
        return (jnp.sum(jnp.square(a), axis=(1, 2)) + one) * jnp.sum(jnp.square(g), axis=(1, 2))
    if method == "ghost":
        gram_a = jnp.einsum("ptd,psd->pts", a, a, precision=hi)
        gram_g = jnp.einsum("ptd,psd->pts", g, g, precision=hi)
        if with_bias:
            gram_a = gram_a + 1.0
        return jnp.sum(gram_a * gram_g, axis=(1, 2))
    if with_bias:
        raise ValueError("with_bias is for the ghost method")
    w = jnp.einsum("ptd,pte->pde", a, g, precision=hi)
    return jnp.sum(jnp.square(w), axis=(1, 2))


def embed_sq_norms(ids: Any, g: Any) -> Any:
    """Squared per-example norms of an embedding table's gradient.

    Args:
        ids: ``(p, T)`` integer token ids per example.
        g: ``(p, T, D)`` output gradients per example.

    ‖∇E‖² = Σ_{t,s} [id_t = id_s]·⟨g_t, g_s⟩: T²·D work, no (V, D) array per example.
    """
    import jax.numpy as jnp
    from jax import lax

    g = g.astype(jnp.float32)
    same = (ids[:, :, None] == ids[:, None, :]).astype(jnp.float32)
    gram = jnp.einsum("ptd,psd->pts", g, g, precision=lax.Precision.HIGHEST)
    return jnp.sum(same * gram, axis=(1, 2))


def conv_padding(padding: Any, spatial: int) -> Any:
    """Flax ``Conv.padding`` as ``lax`` accepts it, or ``None`` if unsupported.

    ``"SAME"``, ``"SAME_LOWER"`` and ``"VALID"`` pass through; an int or a
    sequence of ints / (low, high) pairs becomes pairs; ``"CIRCULAR"`` and
    ``"CAUSAL"`` (Flax pads the input itself first) give ``None``.
    """
    if isinstance(padding, str):
        return padding if padding in ("SAME", "SAME_LOWER", "VALID") else None
    if isinstance(padding, int):
        return [(padding, padding)] * spatial
    pads = []
    for item in padding:
        if isinstance(item, int):
            pads.append((item, item))
        else:
            low, high = item
            pads.append((int(low), int(high)))
    return pads if len(pads) == spatial else None


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


def conv_patches(a: Any, module: Any) -> Any:
    """The unfolded patches of a Flax ``nn.Conv``'s input, per example.

    Args:
        a: ``(p, *batch, *spatial, C)`` per-example inputs (``batch`` may be
            empty or, e.g., the leading 1 of a one-example batch).
        module: the ``nn.Conv`` (padding accepted by :func:`conv_padding`;
            any ``feature_group_count``: the patches do not depend on it).

    Returns:
        ``(p, T, C·∏kernel_size)`` with T = (∏batch)·(output positions):
        row t of example i is the input patch that output position t of the
        layer multiplies with the (flattened) kernel; columns in
        ``lax.conv_general_dilated_patches``'s order (channel major, then the
        kernel offsets in row-major order).

    The patches are cut as ∏kernel_size strided slices of the padded input,
    one per kernel offset: copies only.  ``lax.conv_general_dilated_patches``
    computes the same array as a convolution with a one-hot kernel, which
    costs (C·∏kernel_size)² multiply-adds per output position instead of
    none (4.5× the layer's own forward work for a 3×3 convolution from 16 to
    32 channels); it remains the route for input (transposed) dilation.
    """
    import itertools

    import jax.numpy as jnp
    from jax import lax

    n = len(module.kernel_size)
    if n > 3:  # pragma: no cover - guarded by the caller
        raise ValueError(f"conv with {n} spatial dimensions")
    p = a.shape[0]
    inner = tuple(a.shape[-(n + 1) :])
    x = a.reshape((-1, *inner))
    kernel = tuple(int(k) for k in module.kernel_size)
    strides = _tuple(module.strides, n)
    kernel_dilation = _tuple(module.kernel_dilation, n)
    input_dilation = _tuple(module.input_dilation, n)
    padding = conv_padding(module.padding, n)
    channels = inner[-1]
    if any(d != 1 for d in input_dilation):
        letters = "DHW"[-n:]
        spec = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
        patches = lax.conv_general_dilated_patches(
            x,
            filter_shape=kernel,
            window_strides=strides,
            padding=padding,
            lhs_dilation=input_dilation,
            rhs_dilation=kernel_dilation,
            dimension_numbers=spec,
            precision=lax.Precision.HIGHEST,
        )
        return patches.reshape((p, -1, channels * math.prod(kernel)))
    window = tuple((k - 1) * d + 1 for k, d in zip(kernel, kernel_dilation, strict=True))
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(inner[:-1], window, strides, padding)
    config = [(0, 0, 0), *((int(lo), int(hi), 0) for lo, hi in padding), (0, 0, 0)]
    xp = lax.pad(x, jnp.zeros((), x.dtype), config)
    out = tuple(
        (size - w) // s + 1 for size, w, s in zip(xp.shape[1:-1], window, strides, strict=True)
    )
    cols = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        start = tuple(o * d for o, d in zip(offset, kernel_dilation, strict=True))
        limit = tuple(
            b + (m - 1) * s + 1 for b, m, s in zip(start, out, strides, strict=True)
        )
        cols.append(
            lax.slice(
                xp,
                (0, *start, 0),
                (xp.shape[0], *limit, channels),
                (1, *strides, 1),
            )
        )
    patches = jnp.stack(cols, axis=-1)  # (N, *out, C, ∏kernel): channel major
    return patches.reshape((p, -1, channels * len(cols)))


PATCH_FLOOR_BYTES = 1 << 20


def conv_chunk(
    p: int, tokens: int, d_in: int, d_out: int, method: str, groups: int = 1
) -> int:
    """How many examples' patches a Conv layer's norm rule unfolds at a time.

    One example's patches take T·G·d_in floats (G = ``groups``, d_in and
    d_out per group), and the rule's product over them G·2T² more
    (``ghost``: two Gram matrices per group) or G·d_in·d_out (``direct``:
    the kernel gradient).  The layer's output gradient, which the step holds
    for all p examples anyway (book-keeping needs it), takes p·T·G·d_out.
    The norms are therefore computed in chunks of

        max(⌊p·T·G·d_out / (2·w)⌋, ⌊PATCH_FLOOR_BYTES / (4·w)⌋), at most p,

    examples (w the per-example floats above): the unfolded working set
    stays within half of that output gradient, except that a chunk is never
    smaller than what fills ``PATCH_FLOOR_BYTES`` (1 MiB), below which the
    loop over chunks costs more than the memory it saves.  Shapes only, so
    the choice is fixed per run (one compilation).
    """
    work = groups * (tokens * d_in + (2 * tokens * tokens if method == "ghost" else d_in * d_out))
    by_share = (p * tokens * groups * d_out) // (2 * work)
    by_floor = PATCH_FLOOR_BYTES // (4 * work)
    return max(1, min(p, max(by_share, by_floor)))


def map_in_chunks(fn: Any, a: Any, g: Any, chunk: int) -> Any:
    """``fn(a, g) -> (p,)`` evaluated ``chunk`` examples at a time (``lax.map``).

    Row i of the result depends only on row i of ``a`` and ``g`` for the
    rules here, so the chunks concatenate to ``fn(a, g)``; the last, shorter
    chunk (when ``chunk`` does not divide p) is evaluated on its own.
    """
    import jax.numpy as jnp
    from jax import lax

    p = a.shape[0]
    if chunk >= p:
        return fn(a, g)
    full = (p // chunk) * chunk

    def split(v: Any) -> Any:
        return v[:full].reshape((p // chunk, chunk, *v.shape[1:]))

    head = lax.map(lambda ag: fn(ag[0], ag[1]), (split(a), split(g))).reshape((full,))
    if full == p:
        return head
    return jnp.concatenate([head, fn(a[full:], g[full:])])


def direct_grads(apply_layer: Any, theta: Any, a: Any, g: Any) -> Any:
    """Each example's gradient of this layer's parameters: ``{name: (p, *shape)}``.

    Args:
        apply_layer: ``apply_layer(theta, a_i) -> output`` for one example.
        theta: the layer's parameters (a dict of arrays).
        a, g: stacked per-example inputs and output gradients.

    The layer's own vector-Jacobian product at (a_i, g_i), under ``vmap``.
    For the normalisation layers this is a few values per example, which
    both the norm (:func:`grads_sq_norms`) and the weighted sum reuse.
    """
    import jax

    def one(a_i, g_i):
        _, vjp = jax.vjp(lambda th: apply_layer(th, a_i), theta)
        (grad,) = vjp(g_i)
        return grad

    return jax.vmap(one)(a, g)


def grads_sq_norms(grads: Any, trainable: Any) -> Any:
    """Σ over the trainable leaves of ``grads`` (``{name: (p, …)}``) of ‖grad_i‖², float32 ``(p,)``."""
    import jax.numpy as jnp

    p = next(iter(grads.values())).shape[0]
    sq = jnp.zeros((p,), jnp.float32)
    for name, leaf in grads.items():
        if trainable[name]:
            sq = sq + jnp.sum(jnp.square(leaf.astype(jnp.float32).reshape(p, -1)), axis=1)
    return sq
