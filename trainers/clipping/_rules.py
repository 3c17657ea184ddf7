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
(``lax.conv_general_dilated_patches`` with the layer's strides, padding and
dilations) and T the number of output positions.

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
    "conv_patches",
    "direct_sq_norms",
    "embed_sq_norms",
    "linear_method",
    "linear_sq_norms",
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


def linear_sq_norms(a: Any, g: Any, *, kernel: bool, bias: bool, method: str) -> Any:
    """Squared per-example norms of a linear layer's kernel and/or bias gradient.

    Args:
        a: ``(p, T, d_in)`` inputs (tokens or patches) per example.
        g: ``(p, T, d_out)`` output gradients per example.
        kernel: include the kernel gradient A_iᵀG_i.
        bias: include the bias gradient 1ᵀG_i.
        method: ``"ghost"`` (Gram matrices) or ``"direct"`` (form A_iᵀG_i).
    """
    import jax.numpy as jnp
    from jax import lax

    hi = lax.Precision.HIGHEST
    a = a.astype(jnp.float32)
    g = g.astype(jnp.float32)
    sq = jnp.zeros((g.shape[0],), jnp.float32)
    if kernel:
        if a.shape[1] == 1:
            sq = sq + jnp.sum(jnp.square(a), axis=(1, 2)) * jnp.sum(jnp.square(g), axis=(1, 2))
        elif method == "ghost":
            gram_a = jnp.einsum("ptd,psd->pts", a, a, precision=hi)
            gram_g = jnp.einsum("ptd,psd->pts", g, g, precision=hi)
            sq = sq + jnp.sum(gram_a * gram_g, axis=(1, 2))
        else:
            w = jnp.einsum("ptd,pte->pde", a, g, precision=hi)
            sq = sq + jnp.sum(jnp.square(w), axis=(1, 2))
    if bias:
        sq = sq + jnp.sum(jnp.square(jnp.sum(g, axis=1)), axis=1)
    return sq


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
        module: the ``nn.Conv`` (``feature_group_count == 1``, padding
            accepted by :func:`conv_padding`).

    Returns:
        ``(p, T, C·∏kernel_size)`` with T = (∏batch)·(output positions):
        row t of example i is the input patch that output position t of the
        layer multiplies with the (flattened) kernel.
    """
    from jax import lax

    n = len(module.kernel_size)
    p = a.shape[0]
    inner = a.shape[-(n + 1) :]
    x = a.reshape((-1, *tuple(inner)))
    letters = "DHW"[-n:] if n <= 3 else None
    if letters is None:  # pragma: no cover - guarded by the caller
        raise ValueError(f"conv with {n} spatial dimensions")
    spec = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
    patches = lax.conv_general_dilated_patches(
        x,
        filter_shape=tuple(module.kernel_size),
        window_strides=_tuple(module.strides, n),
        padding=conv_padding(module.padding, n),
        lhs_dilation=_tuple(module.input_dilation, n),
        rhs_dilation=_tuple(module.kernel_dilation, n),
        dimension_numbers=spec,
        precision=lax.Precision.HIGHEST,
    )
    k = inner[-1] * math.prod(module.kernel_size)
    return patches.reshape((p, -1, k))


def direct_sq_norms(apply_layer: Any, theta: Any, trainable: Any, a: Any, g: Any) -> Any:
    """Squared per-example norms by forming each example's gradient of this layer.

    Args:
        apply_layer: ``apply_layer(theta, a_i) -> output`` for one example.
        theta: the layer's parameters (a dict of arrays).
        trainable: dict of bools with ``theta``'s keys.
        a, g: stacked per-example inputs and output gradients.
    """
    import jax
    import jax.numpy as jnp

    def one(a_i, g_i):
        _, vjp = jax.vjp(lambda th: apply_layer(th, a_i), theta)
        (grad,) = vjp(g_i)
        return grad

    grads = jax.vmap(one)(a, g)
    p = g.shape[0]
    sq = jnp.zeros((p,), jnp.float32)
    for name, leaf in grads.items():
        if trainable[name]:
            sq = sq + jnp.sum(jnp.square(leaf.astype(jnp.float32).reshape(p, -1)), axis=1)
    return sq
