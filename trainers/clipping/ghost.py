"""Ghost clipping: per-example gradient norms and the clipped sum without
per-example gradients, for Flax linen models.

For a physical batch of p examples this computes, in ONE forward and ONE
backward pass through the model,

* each example's loss ℓ_i;
* the global L2 norm ‖∇ℓ_i‖ over the trainable parameters, layer by layer,
  from the layer's per-example input a_i and output gradient g_i
  (:mod:`trainers.clipping._rules`: Gram-matrix ("ghost") or direct norms for
  Dense / DenseGeneral / Conv, shared-id Gram norms for Embed, direct norms
  for LayerNorm / GroupNorm / RMSNorm);
* and then, for any per-example weights w_i (the clip factors) and a keep
  mask, the weighted sum Σ_i where(keep_i, w_i·∇ℓ_i, 0) by "book-keeping"
  (Bu et al. 2023, "Differentially Private Optimization on Large Model at
  Small Cost", arXiv:2210.00038): each layer's parameter gradient is the
  layer's own vector-Jacobian product at the stored inputs with the stored
  output gradients scaled by w_i (rows with keep_i false zeroed in both,
  so a NaN/inf row adds exactly 0).  No second backward pass through the
  network is needed: only the weight-gradient products a standard backward
  pass would do anyway.

How a_i and g_i are obtained: the model runs under ``jax.vmap`` over the p
examples (each a batch of one), and a Flax method interceptor
(``flax.linen.intercept_methods``) records the input of every supported
layer and adds a zero-valued perturbation δ to its output.  The gradient of
Σ_i ℓ_i with respect to δ is g_i (the gradient with respect to a layer's
output), example by example, because under ``vmap`` example i's loss depends
only on example i's δ.  Attention is covered through its ``DenseGeneral``
query/key/value/output projections (the attention itself has no parameters).

Parameters that no supported layer owns but that a *container* module
declares with ``self.param`` (a position embedding, a class token) are
"loose": they are passed per example (broadcast to ``(p, …)``) so the same
backward pass yields their per-example gradients directly (their size per
example, as in ``vmap(grad)``).  A trainable parameter of any other module
that owns parameters itself (a leaf module of a type without a rule, e.g.
``nn.Einsum``), a supported layer called twice per example, called through
another method (``Embed.attend``) or with a configuration the rules do not
cover (circular padding, ``DenseGeneral`` batch
dimensions) raises :class:`UnsupportedLayer`, one line naming the layer.

Frozen parameters (``trainable`` false) are excluded from the norms and get
a zero sum; a layer with no trainable parameter is not instrumented at all.

The plan (which layers, which rule) is derived from shapes only
(``jax.eval_shape``), at trace time: it adds no compilation.

References: Goodfellow 2015, "Efficient Per-Example Gradient Computations",
arXiv:1510.01799; Lee & Kifer 2021, "Scaling up Differentially Private Deep
Learning with Fast Per-Example Gradient Clipping", PoPETs 2021; Li et al.
2022, arXiv:2110.05679 (ghost norm on sequences); Bu et al. 2022,
arXiv:2205.10683 (mixed ghost clipping, convolutions); Bu et al. 2023,
arXiv:2210.00038 (book-keeping).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

from dpverify.errors import InvalidArgument
from trainers.clipping import _rules
from trainers.precision import compute_dtype

__all__ = ["GhostClipping", "GhostPass", "GhostPlan", "LayerPlan", "UnsupportedLayer"]


class UnsupportedLayer(InvalidArgument):
    """A trainable layer that ghost clipping cannot handle (use ``clipping="vmap"``)."""


def _supported() -> dict[type, str]:
    import flax.linen as nn

    kinds = {
        nn.Dense: "dense",
        nn.DenseGeneral: "dense_general",
        nn.Conv: "conv",
        nn.Embed: "embed",
        nn.LayerNorm: "norm",
        nn.GroupNorm: "norm",
    }
    if hasattr(nn, "RMSNorm"):
        kinds[nn.RMSNorm] = "norm"
    return kinds


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """How one instrumented layer's per-example norm is computed.

    Attributes:
        key: the layer's module path joined with ``/`` (``"block0/Dense_0"``).
        kind: the Flax class name (``"Dense"``).
        rule: ``"ghost"``, ``"direct"`` (linear layers), ``"embed"`` or
            ``"norm"`` (direct per-example gradient of a few parameters).
        module: an unbound copy of the layer (``module.apply`` recomputes it).
        leaves: parameter name → index in ``tree_leaves(params)``.
        trainable: parameter name → trained.
        out_shape, out_dtype: the layer's output for one example.
        tokens, d_in, d_out: T, d_in, d_out of a linear layer (0 otherwise);
            for a grouped convolution, d_in and d_out per group.
        groups: a convolution's ``feature_group_count`` (1 otherwise).
    """

    key: str
    kind: str
    rule: str
    module: Any
    leaves: dict[str, int]
    trainable: dict[str, bool]
    out_shape: tuple[int, ...]
    out_dtype: Any
    tokens: int = 0
    d_in: int = 0
    d_out: int = 0
    groups: int = 1


@dataclasses.dataclass(frozen=True)
class GhostPlan:
    """Instrumented layers and loose parameters of a model (see module docstring)."""

    layers: tuple[LayerPlan, ...]
    loose: tuple[int, ...]
    loose_names: tuple[str, ...]

    def describe(self) -> str:
        """One line per layer: path, class, rule and (T, d_in, d_out)."""
        lines = []
        for layer in self.layers:
            dims = f" T={layer.tokens} d_in={layer.d_in} d_out={layer.d_out}" if layer.d_in else ""
            if layer.groups > 1:
                dims += f" groups={layer.groups}"
            lines.append(f"{layer.key} ({layer.kind}): {layer.rule}{dims}")
        for name in self.loose_names:
            lines.append(f"{name} (parameter): per-example gradient")
        return "\n".join(lines)


class GhostPass(NamedTuple):
    """The result of one ghost pass over a physical batch.

    Attributes:
        losses: float32 ``(p,)`` per-example losses.
        norms: float32 ``(p,)`` per-example gradient norms over the trainable
            leaves (NaN/inf for an example whose forward or backward was not
            finite).
        weighted_sum: ``weighted_sum(weights, keep) -> list`` of float32 leaves
            (``tree_leaves(params)`` order): Σ_i where(keep_i, weights_i·∇ℓ_i, 0),
            zero on frozen leaves.
    """

    losses: Any
    norms: Any
    weighted_sum: Callable[[Any, Any], list]


def _path_names(path: Any) -> tuple[str, ...]:
    names = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
        else:
            names.append(str(k))
    return tuple(names)


def _stored_weighted_sum(grads: dict, w: Any, keep: Any) -> dict:
    """Σ_i where(keep_i, w_i·grad_i, 0) over per-example gradients ``{name: (p, …)}``.

    ``where`` after the product, so a NaN/inf row that is not kept adds exactly 0.
    """
    import jax.numpy as jnp

    out = {}
    for name, leaf in grads.items():
        shape = (leaf.shape[0],) + (1,) * (leaf.ndim - 1)
        weighted = leaf.astype(jnp.float32) * w.reshape(shape)
        out[name] = jnp.sum(jnp.where(keep.reshape(shape), weighted, 0.0), axis=0)
    return out


def _subtree(params: Any, key: str) -> Any:
    node = params
    for name in key.split("/") if key else ():
        node = node[name]
    return node


class GhostClipping:
    """Per-example norms and clipped sums by ghost clipping (module docstring).

    Args:
        model_apply: ``model_apply(params, x) -> logits`` of a Flax linen model
            (``lambda p, x: model.apply({"params": p}, x)``): module paths must
            be parameter paths.
        loss_fn: per-example loss ``loss_fn(logits, labels) -> (batch,)``.
        trainable: :func:`trainers.dpsgd.trainable_leaves` of the parameters.
        precision: a :mod:`trainers.precision` name; parameters and inputs are
            cast to its compute dtype as in the ``vmap`` path, norms and sums
            are float32.
    """

    def __init__(
        self,
        model_apply: Callable[[Any, Any], Any],
        loss_fn: Callable[[Any, Any], Any],
        trainable: tuple[bool, ...],
        precision: str = "float32",
    ) -> None:
        self.model_apply = model_apply
        self.loss_fn = loss_fn
        self.trainable = tuple(bool(t) for t in trainable)
        self.precision = precision
        self._plans: dict[Any, GhostPlan] = {}

    # -- plan ----------------------------------------------------------------------

    def _cast(self, tree: Any) -> Any:
        import jax
        import jax.numpy as jnp

        cdt = compute_dtype(self.precision)

        def cast(a):
            return a.astype(cdt) if jnp.issubdtype(a.dtype, jnp.floating) else a

        return jax.tree_util.tree_map(cast, tree)

    def plan(self, params: Any, x_one: Any) -> GhostPlan:
        """The :class:`GhostPlan` for ``params`` and one example ``x_one`` (no batch axis).

        Shapes only (``jax.eval_shape``); cached per parameter structure and
        example shape.  Raises :class:`UnsupportedLayer` naming the first
        trainable layer without a rule.
        """
        import jax

        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        cache_key = (treedef, tuple(jax.numpy.shape(a) for _, a in flat), jax.numpy.shape(x_one))
        cached = self._plans.get(cache_key)
        if cached is None:
            cached = self._make_plan(params, x_one, flat)
            self._plans[cache_key] = cached
        return cached

    def _make_plan(self, params: Any, x_one: Any, flat: list) -> GhostPlan:
        import flax.linen as nn
        import jax

        if len(flat) != len(self.trainable):
            raise InvalidArgument(
                f"trainable has {len(self.trainable)} flags, params have {len(flat)} leaves"
            )
        kinds = _supported()
        calls: dict[str, list] = {}
        types: dict[str, str] = {}

        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            key = "/".join(module.path)
            types.setdefault(key, type(module).__name__)
            out = next_fun(*args, **kwargs)
            if type(module) in kinds and context.method_name != "setup":
                extra = [k for k, v in kwargs.items() if v is not None]
                calls.setdefault(key, []).append(
                    (
                        module.clone(parent=None),
                        context.method_name,
                        args[0] if args else None,
                        out,
                        len(args) + len(extra),
                    )
                )
            return out

        def forward(p, x):
            with nn.intercept_methods(interceptor):
                return self.model_apply(self._cast(p), self._cast(x)[None])

        jax.eval_shape(forward, params, x_one)

        owned: dict[str, dict[str, int]] = {}
        loose: list[int] = []
        loose_names: list[str] = []
        for index, ((path, _), train) in enumerate(zip(flat, self.trainable, strict=True)):
            names = _path_names(path)
            owner, leaf = "/".join(names[:-1]), names[-1]
            if owner in calls:
                owned.setdefault(owner, {})[leaf] = index
            elif not train:
                continue
            elif owner in types and not any(
                k != owner and (owner == "" or k.startswith(owner + "/")) for k in types
            ):
                raise UnsupportedLayer(
                    f"ghost clipping does not support layer {owner!r} ({types[owner]}); "
                    "use clipping='vmap'"
                )
            else:  # declared by a container module (or outside any module)
                loose.append(index)
                loose_names.append("/".join(names))

        layers = []
        for key in sorted(owned, key=lambda k: min(owned[k].values())):
            leaves = owned[key]
            trainable = {name: self.trainable[i] for name, i in leaves.items()}
            if not any(trainable.values()):
                continue
            layers.append(self._layer_plan(key, types.get(key, "?"), calls[key], leaves, trainable))
            self._check_params(layers[-1], params, calls[key][0][2])
        return GhostPlan(tuple(layers), tuple(loose), tuple(loose_names))

    def _layer_plan(
        self, key: str, kind: str, calls: list, leaves: dict, trainable: dict
    ) -> LayerPlan:
        import jax.numpy as jnp

        def unsupported(why: str) -> UnsupportedLayer:
            return UnsupportedLayer(
                f"ghost clipping does not support layer {key!r} ({kind}): {why}; "
                "use clipping='vmap'"
            )

        if len(calls) != 1:
            raise unsupported(f"called {len(calls)} times per example")
        module, method, a, out, nargs = calls[0]
        if method != "__call__":
            raise unsupported(f"called through {method}()")
        if nargs != 1 or a is None or not hasattr(out, "shape"):
            raise unsupported("called with more than one input")
        rule = _supported()[type(module)]
        tokens = d_in = d_out = 0
        groups = 1
        if rule == "dense":
            d_in, d_out = int(a.shape[-1]), int(out.shape[-1])
            tokens = math.prod(a.shape[:-1])
        elif rule == "dense_general":
            axis = module.axis if isinstance(module.axis, tuple | list) else (module.axis,)
            axis = tuple(sorted(int(ax) % len(a.shape) for ax in axis))
            features = (
                module.features if isinstance(module.features, tuple | list) else (module.features,)
            )
            if module.batch_dims:
                raise unsupported(f"batch_dims={module.batch_dims!r}")
            if axis != tuple(range(len(a.shape) - len(axis), len(a.shape))):
                raise unsupported(f"axis={module.axis!r} contracts non-trailing input axes")
            d_in = math.prod(a.shape[-len(axis) :])
            d_out = math.prod(out.shape[-len(features) :])
            tokens = math.prod(a.shape[: -len(axis)])
        elif rule == "conv":
            n = len(module.kernel_size)
            groups = int(module.feature_group_count)
            if getattr(module, "mask", None) is not None:
                raise unsupported("masked kernel")
            if _rules.conv_padding(module.padding, n) is None:
                raise unsupported(f"padding={module.padding!r}")
            if len(a.shape) < n + 1:
                raise unsupported(f"input of rank {len(a.shape)}")
            if groups < 1 or a.shape[-1] % groups or out.shape[-1] % groups:
                raise unsupported(f"feature_group_count={module.feature_group_count}")
            d_in = int(a.shape[-1]) // groups * math.prod(module.kernel_size)
            d_out = int(out.shape[-1]) // groups
            tokens = math.prod(out.shape[:-1])
        elif rule == "embed":
            if not jnp.issubdtype(a.dtype, jnp.integer):
                raise unsupported(f"non-integer ids ({a.dtype})")
        if rule in ("dense", "dense_general", "conv"):
            rule = _rules.linear_method(tokens, d_in, d_out)
        return LayerPlan(
            key=key,
            kind=kind,
            rule=rule,
            module=module,
            leaves=dict(leaves),
            trainable=dict(trainable),
            out_shape=tuple(out.shape),
            out_dtype=out.dtype,
            tokens=tokens,
            d_in=d_in,
            d_out=d_out,
            groups=groups,
        )

    def _check_params(self, layer: LayerPlan, params: Any, a: Any) -> None:
        """The layer's parameters are the plain subtree at its path (no nn.scan/nn.vmap)."""
        import jax

        theta = _subtree(params, layer.key)
        try:
            out = jax.eval_shape(
                lambda th, x: layer.module.apply({"params": self._cast(th)}, x), theta, a
            )
        except Exception as exc:
            raise UnsupportedLayer(
                f"ghost clipping does not support layer {layer.key!r} ({layer.kind}): its "
                f"parameters do not re-apply ({type(exc).__name__}); use clipping='vmap'"
            ) from None
        if tuple(out.shape) != layer.out_shape:
            raise UnsupportedLayer(
                f"ghost clipping does not support layer {layer.key!r} ({layer.kind}): "
                "re-applying it gives another shape; use clipping='vmap'"
            )

    # -- the pass ------------------------------------------------------------------

    def __call__(self, params: Any, xb: Any, yb: Any) -> GhostPass:
        """Losses, norms and the weighted-sum closure for the rows ``(xb, yb)`` (traced)."""
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        plan = self.plan(params, jax.ShapeDtypeStruct(xb.shape[1:], xb.dtype))
        p = xb.shape[0]
        leaves, treedef = jax.tree_util.tree_flatten(params)
        loose_b = [jnp.broadcast_to(leaves[j], (p, *jnp.shape(leaves[j]))) for j in plan.loose]
        deltas = {
            layer.key: jnp.zeros((p, *layer.out_shape), layer.out_dtype) for layer in plan.layers
        }

        def one(loose_i, delta_i, x_i, y_i):
            full = list(leaves)
            for j, v in zip(plan.loose, loose_i, strict=True):
                full[j] = v
            inputs = {}

            def interceptor(next_fun, args, kwargs, context):
                key = "/".join(context.module.path)
                if context.method_name == "__call__" and key in delta_i:
                    inputs[key] = args[0]
                    return next_fun(*args, **kwargs) + delta_i[key]
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(interceptor):
                logits = self.model_apply(
                    self._cast(jax.tree_util.tree_unflatten(treedef, full)), self._cast(x_i)[None]
                )
            loss = self.loss_fn(logits.astype(jnp.float32), y_i[None])[0]
            return loss.astype(jnp.float32), inputs

        def total(loose_b, deltas):
            losses, inputs = jax.vmap(one)(loose_b, deltas, xb, yb)
            return jnp.sum(losses), (losses, inputs)

        (_, (losses, inputs)), (g_loose, g_out) = jax.value_and_grad(
            total, argnums=(0, 1), has_aux=True
        )(loose_b, deltas)

        sq = jnp.zeros((p,), jnp.float32)
        stored: dict[str, Any] = {}  # per-example gradients a rule formed anyway
        for layer in plan.layers:
            layer_sq, grads = self._layer_sq_norms(
                layer, params, inputs[layer.key], g_out[layer.key]
            )
            sq = sq + layer_sq
            if grads is not None:
                stored[layer.key] = grads
        for g in g_loose:
            sq = sq + jnp.sum(jnp.square(g.astype(jnp.float32).reshape(p, -1)), axis=1)
        norms = jnp.sqrt(sq)

        def weighted_sum(weights: Any, keep: Any) -> list:
            w = jnp.where(keep, weights, 0.0).astype(jnp.float32)
            out = [jnp.zeros(jnp.shape(a), jnp.float32) for a in leaves]
            for layer in plan.layers:
                if layer.key in stored:
                    grads = _stored_weighted_sum(stored[layer.key], w, keep)
                else:
                    grads = self._layer_weighted_sum(
                        layer, params, inputs[layer.key], g_out[layer.key], w, keep
                    )
                for name, index in layer.leaves.items():
                    if layer.trainable[name]:
                        out[index] = grads[name].astype(jnp.float32)
            for j, g in zip(plan.loose, g_loose, strict=True):
                shape = (p,) + (1,) * (g.ndim - 1)
                g32 = g.astype(jnp.float32)
                out[j] = jnp.sum(
                    jnp.where(keep.reshape(shape), g32 * w.reshape(shape), 0.0), axis=0
                )
            return out

        return GhostPass(losses, norms, weighted_sum)

    def _apply_layer(self, layer: LayerPlan) -> Callable[[Any, Any], Any]:
        def apply(theta, a):
            return layer.module.apply({"params": self._cast(theta)}, a)

        return apply

    def _layer_sq_norms(
        self, layer: LayerPlan, params: Any, a: Any, g: Any
    ) -> tuple[Any, dict | None]:
        """The layer's squared per-example norms, and the per-example gradients
        if its rule formed them (normalisation layers; ``None`` otherwise)."""
        p = g.shape[0]
        tr = layer.trainable
        kernel, bias = tr.get("kernel", False), tr.get("bias", False)
        if layer.rule in ("ghost", "direct"):
            if layer.kind == "Conv":

                def conv_norms(a_c: Any, g_c: Any) -> Any:
                    rows = _rules.conv_patches(a_c, layer.module)
                    return _rules.linear_sq_norms(
                        rows,
                        g_c.reshape((g_c.shape[0], layer.tokens, layer.groups * layer.d_out)),
                        kernel=kernel,
                        bias=bias,
                        method=layer.rule,
                        groups=layer.groups,
                    )

                chunk = _rules.conv_chunk(
                    p, layer.tokens, layer.d_in, layer.d_out, layer.rule, layer.groups
                )
                return _rules.map_in_chunks(conv_norms, a, g, chunk), None
            rows = a.reshape((p, layer.tokens, layer.d_in))
            return (
                _rules.linear_sq_norms(
                    rows,
                    g.reshape((p, layer.tokens, layer.d_out)),
                    kernel=kernel,
                    bias=bias,
                    method=layer.rule,
                ),
                None,
            )
        if layer.rule == "embed":
            return _rules.embed_sq_norms(a.reshape((p, -1)), g.reshape((p, a[0].size, -1))), None
        theta = _subtree(params, layer.key)
        grads = _rules.direct_grads(self._apply_layer(layer), theta, a, g)
        return _rules.grads_sq_norms(grads, tr), grads

    def _layer_weighted_sum(
        self, layer: LayerPlan, params: Any, a: Any, g: Any, w: Any, keep: Any
    ) -> Any:
        """Σ_i w_i·(this layer's gradient of ℓ_i): the layer's VJP at the kept rows."""
        import jax
        import jax.numpy as jnp

        p = g.shape[0]
        theta = _subtree(params, layer.key)
        if (
            layer.kind in ("Dense", "DenseGeneral")
            and layer.rule in ("ghost", "direct")
            and getattr(layer.module, "dot_general", None) is None
            and getattr(layer.module, "dot_general_cls", None) is None
        ):
            return self._linear_weighted_sum(layer, theta, a, g, w, keep)
        a_kept = jnp.where(keep.reshape((p,) + (1,) * (a.ndim - 1)), a, jnp.zeros((), a.dtype))
        gw = g.astype(jnp.float32) * w.reshape((p,) + (1,) * (g.ndim - 1))
        g_kept = jnp.where(keep.reshape((p,) + (1,) * (g.ndim - 1)), gw, 0.0).astype(g.dtype)
        _, vjp = jax.vjp(lambda th: self._apply_layer(layer)(th, a_kept), theta)
        (grads,) = vjp(g_kept)
        return grads

    def _linear_weighted_sum(
        self, layer: LayerPlan, theta: Any, a: Any, g: Any, w: Any, keep: Any
    ) -> dict:
        """A Dense/DenseGeneral layer's Σ_i w_i·∇ℓ_i as one matrix product.

        With the p·T kept rows stacked, A ∈ R^{pT×d_in} and G ∈ R^{pT×d_out}
        (row (i, t) scaled by w_i, dropped rows zeroed in both so a NaN/inf
        row adds exactly 0): kernel = AᵀG, bias = 1ᵀG.  The same products the
        layer's VJP computes, written as one plain (pT, d) contraction (the
        VJP's batched layout was a slower generic dot on the ViT;
        docs/masked-dpsgd.md).  When kernel and bias are both trained, the
        bias is the last row of one product [A | k]ᵀG, with k the 0/1 keep
        column: one pass over G instead of a product and a separate sum.
        """
        import jax.numpy as jnp

        n = g.shape[0] * layer.tokens
        rows_keep = jnp.repeat(keep, layer.tokens)[:, None]
        rows_w = jnp.repeat(w.astype(jnp.float32), layer.tokens)[:, None]
        a2 = jnp.where(rows_keep, a.reshape((n, layer.d_in)), jnp.zeros((), a.dtype))
        g2 = g.reshape((n, layer.d_out))
        gw = jnp.where(rows_keep, g2.astype(jnp.float32) * rows_w, 0.0).astype(g.dtype)
        out = {}
        train_kernel = layer.trainable.get("kernel", False)
        train_bias = layer.trainable.get("bias", False)
        if train_kernel and train_bias:
            a2 = jnp.concatenate([a2, rows_keep.astype(a2.dtype)], axis=1)
        if train_kernel:
            kernel = jnp.einsum(
                "nd,ne->de",
                a2,
                gw,
                precision=getattr(layer.module, "precision", None),
                preferred_element_type=jnp.float32,
            )
            if train_bias:
                out["bias"] = kernel[-1].reshape(jnp.shape(theta["bias"]))
                kernel = kernel[:-1]
            out["kernel"] = kernel.reshape(jnp.shape(theta["kernel"]))
        elif train_bias:
            bias = jnp.sum(gw.astype(jnp.float32), axis=0)
            out["bias"] = bias.reshape(jnp.shape(theta["bias"]))
        return out
