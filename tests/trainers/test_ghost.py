"""Tests for trainers.clipping (ghost clipping): per-example norms and clipped
sums equal those of ``vmap(grad)`` per-example gradients (float32 tolerance)
and of the float64 reference, over the four model families, batch sizes, clip
norms (active and inactive), NaN/inf padding rows and frozen leaves; unsupported
layers are one-line errors naming the layer."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpverify.errors import InvalidArgument
from trainers.clipping import GhostClipping, UnsupportedLayer
from trainers.clipping._rules import linear_method, linear_sq_norms
from trainers.dpsgd import trainable_leaves
from trainers.losses import softmax_cross_entropy
from trainers.models import CNN, MLP, TextTransformer, ViT
from trainers.reference import reference_noisy_gradient

# name -> (model, example shape or ("tokens", length), vocabulary)
MODELS = {
    "mlp": (MLP(num_classes=3, hidden=(6,)), (4, 4)),
    "cnn": (CNN(num_classes=3, channels=(4, 8), groups=2), (6, 6, 2)),
    "vit": (
        ViT(num_classes=3, patch_size=2, width=8, depth=1, num_heads=2, mlp_dim=12),
        (4, 4, 1),
    ),
    "text": (
        TextTransformer(num_classes=3, vocab_size=11, width=8, depth=1, num_heads=2, mlp_dim=12),
        ("tokens", 7),
    ),
}


@functools.cache
def _setup(name):
    model, shape = MODELS[name]
    rng = np.random.default_rng(1)
    if shape[0] == "tokens":
        x = rng.integers(0, 11, size=(8, shape[1])).astype(np.int32)
        x[:, 0] = 3  # every text has a real token; ids repeat (shared embedding rows)
    else:
        x = rng.normal(size=(8, *shape)).astype(np.float32)
    y = rng.integers(0, 3, size=8).astype(np.int32)
    params = model.init(jax.random.key(0), x[:1])["params"]

    def apply(p, xx):
        return model.apply({"params": p}, xx)

    return apply, params, x, y


def _vmap_clip(apply, params, xb, yb, trainable, clip, keep):
    """The vmap path: per-example gradients, norms, masked clipped sum (jitted once per model and
    trainable set; the clip norm is an argument, so examples that differ only in data, C or mask
    reuse the compilation)."""
    return _jitted(_vmap_clip_eager, apply, tuple(trainable))(params, xb, yb, clip, keep)


@functools.cache
def _jitted(fn, apply, trainable):
    return jax.jit(functools.partial(fn, apply, trainable=trainable))


def _vmap_clip_eager(apply, params, xb, yb, clip, keep, *, trainable):

    def example_loss(p, x, y):
        return softmax_cross_entropy(apply(p, x[None]), y[None])[0]

    losses, grads = jax.vmap(jax.value_and_grad(example_loss), in_axes=(None, 0, 0))(params, xb, yb)
    leaves = jax.tree_util.tree_leaves(grads)
    p = xb.shape[0]
    sq = sum(
        jnp.sum(jnp.square(g.reshape(p, -1)), 1)
        for g, t in zip(leaves, trainable, strict=False)
        if t
    )
    norms = jnp.sqrt(sq)
    factor = jnp.where(jnp.isfinite(norms), clip / jnp.maximum(norms, clip), 0.0)
    sums = [
        jnp.sum(
            jnp.where(
                keep.reshape((p,) + (1,) * (g.ndim - 1)),
                g * factor.reshape((p,) + (1,) * (g.ndim - 1)),
                0.0,
            ),
            0,
        )
        if t
        else jnp.zeros(g.shape[1:])
        for g, t in zip(leaves, trainable, strict=False)
    ]
    return losses, norms, sums


def _ghost_clip(apply, params, xb, yb, trainable, clip, keep):
    """Ghost clipping's losses, norms and masked clipped sum (jitted like :func:`_vmap_clip`)."""
    return _jitted(_ghost_clip_eager, apply, tuple(trainable))(params, xb, yb, clip, keep)


def _ghost_clip_eager(apply, params, xb, yb, clip, keep, *, trainable):
    out = GhostClipping(apply, softmax_cross_entropy, trainable)(params, xb, yb)
    finite = jnp.isfinite(out.norms)
    factor = jnp.where(finite, clip / jnp.maximum(jnp.where(finite, out.norms, clip), clip), 0.0)
    return out.losses, out.norms, out.weighted_sum(factor, keep & finite)


def _frozen_flags(params, bits):
    n = len(jax.tree_util.tree_leaves(params))
    flags = [bool((bits >> i) & 1) for i in range(n)]
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, flags)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(sorted(MODELS)),
    p=st.sampled_from([1, 3, 5]),
    clip=st.sampled_from([1e-3, 1e3]),  # every example clipped / none clipped
    pad=st.integers(0, 2),
    bad=st.sampled_from([np.nan, np.inf]),
    frozen_bits=st.integers(0, 2**12 - 1),
    freeze=st.booleans(),
)
def test_ghost_equals_vmap(name, p, clip, pad, bad, frozen_bits, freeze):
    apply, params, x, y = _setup(name)
    xb, yb = x[:p].copy(), y[:p]
    pad = min(pad, p - 1)
    keep = np.ones(p, bool)
    if pad:
        keep[-pad:] = False
        if xb.dtype.kind == "f":
            xb[-pad:] = bad  # padding rows carry NaN/inf: they must add exactly 0
    trainable = trainable_leaves(params, _frozen_flags(params, frozen_bits) if freeze else None)
    keep = jnp.asarray(keep)
    l1, n1, s1 = _ghost_clip(apply, params, xb, yb, trainable, clip, keep)
    l0, n0, s0 = _vmap_clip(apply, params, xb, yb, trainable, clip, keep)
    real = np.asarray(keep)
    np.testing.assert_allclose(np.asarray(l1)[real], np.asarray(l0)[real], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(n1)[real], np.asarray(n0)[real], rtol=1e-4, atol=1e-6)
    assert all(np.isfinite(np.asarray(s)).all() for s in s1)
    for a, b, t in zip(s1, s0, trainable, strict=False):
        if not t:
            assert not np.any(np.asarray(a)), "a frozen leaf got a gradient"
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ghost_clipped_sum_matches_float64_reference(name):
    apply, params, x, y = _setup(name)
    idx = np.arange(5)
    clip = 0.05  # some examples clipped, not necessarily all
    _assert_ghost_sum_is_the_references(apply, params, x, y, idx, clip)


def _assert_ghost_sum_is_the_references(apply, params, x, y, idx, clip):
    """Ghost clipping's clipped sum of the rows ``idx`` equals the float64
    reference trainer's (its own per-example loop, no noise)."""
    keep = jnp.ones(len(idx), bool)
    trainable = trainable_leaves(params)
    _, _, sums = _ghost_clip(apply, params, x[idx], y[idx], trainable, clip, keep)
    ref = reference_noisy_gradient(
        apply,
        params,
        x,
        y,
        idx,
        clip_norm=clip,
        noise_multiplier=0.0,
        denominator=1.0,
        noise_key=jax.random.key(0),
        step=0,
    )
    for a, b in zip(sums, jax.tree_util.tree_leaves(ref.clipped_sum), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-4, atol=2e-6)


def test_non_finite_real_example_gets_norm_nan_and_adds_nothing():
    apply, params, x, y = _setup("cnn")
    xb = x[:4].copy()
    xb[1] = np.nan
    trainable = trainable_leaves(params)
    keep = jnp.asarray([True, True, True, True])
    _, norms, sums = _ghost_clip(apply, params, xb, y[:4], trainable, 1.0, keep)
    assert not np.isfinite(np.asarray(norms)[1]) and np.isfinite(np.asarray(norms)[[0, 2, 3]]).all()
    sel = np.array([0, 2, 3])
    _, _, expect = _vmap_clip(apply, params, x[sel], y[sel], trainable, 1.0, jnp.ones(3, bool))
    for a, b in zip(sums, expect, strict=False):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_plan_rules_and_frozen_layers_are_not_instrumented():
    apply, params, x, _ = _setup("vit")
    shape = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    plan = GhostClipping(apply, softmax_cross_entropy, trainable_leaves(params)).plan(params, shape)
    kinds = {layer.key: (layer.kind, layer.rule) for layer in plan.layers}
    assert kinds["head"] == ("Dense", "ghost")  # T = 1
    assert kinds["embed"][0] == "Conv"
    assert kinds["block0/MultiHeadDotProductAttention_0/query"][0] == "DenseGeneral"
    assert kinds["LayerNorm_0"] == ("LayerNorm", "norm")
    assert plan.loose_names == ("pos_embedding",)
    frozen = trainable_leaves(params, lambda path, _: "head" not in jax.tree_util.keystr(path))
    plan = GhostClipping(apply, softmax_cross_entropy, frozen).plan(params, shape)
    assert [layer.key for layer in plan.layers] == ["head"] and plan.loose == ()


def test_linear_cost_model_and_both_methods_agree():
    assert linear_method(1, 1000, 1000) == "ghost"
    assert linear_method(64, 384, 384) == "ghost"  # ViT-S attention: T(d_in+d_out) < d_in·d_out
    assert linear_method(1024, 27, 16) == "direct"  # first conv of a CIFAR CNN
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
    ghost = linear_sq_norms(a, g, kernel=True, bias=True, method="ghost")
    direct = linear_sq_norms(a, g, kernel=True, bias=True, method="direct")
    expect = [np.sum((a[i].T @ g[i]) ** 2) + np.sum(np.sum(g[i], 0) ** 2) for i in range(3)]
    np.testing.assert_allclose(ghost, expect, rtol=1e-5)
    np.testing.assert_allclose(direct, expect, rtol=1e-5)


class _OddConvs(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 2), strides=(2, 1), padding=((1, 0), (2, 1)), kernel_dilation=(1, 2))(x)
        x = nn.Conv(2, (2, 2), padding=((0, 1), (1, 0)), input_dilation=2, use_bias=False)(
            jnp.tanh(x)
        )
        x = nn.Conv(4, (3,), padding=1)(x.reshape(x.shape[0], -1, 2))  # 1-D
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_conv_strides_padding_dilations_and_1d():
    model = _OddConvs()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 7, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 4).astype(np.int32)
    params = model.init(jax.random.key(0), x[:1])["params"]

    def apply(p, xx):
        return model.apply({"params": p}, xx)

    trainable = trainable_leaves(params)
    keep = jnp.ones(4, bool)
    _, n1, s1 = _ghost_clip(apply, params, x, y, trainable, 0.5, keep)
    _, n0, s0 = _vmap_clip(apply, params, x, y, trainable, 0.5, keep)
    np.testing.assert_allclose(n1, n0, rtol=1e-4)
    for a, b in zip(s1, s0, strict=False):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_sliced_patches_equal_lax_patches_bit_for_bit(rank):
    """conv_patches cuts the patches by slicing; lax.conv_general_dilated_patches
    (a convolution with a one-hot kernel, not our code) is the oracle, over
    kernel sizes, strides, kernel dilations and every padding form."""
    import itertools

    from jax import lax

    from trainers.clipping._rules import conv_padding, conv_patches

    rng = np.random.default_rng(rank)
    letters = "DHW"[-rank:]
    spec = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
    spatial = (7, 6, 5)[:rank]
    x = jnp.asarray(rng.normal(size=(3, 1, *spatial, 2)), jnp.float32)
    checked = 0
    for k, stride, dil, pad in itertools.product(
        (1, 2, 3), (1, 2, 3), (1, 2), ("SAME", "SAME_LOWER", "VALID", 1, ((2, 0),))
    ):
        kernel = tuple(max(1, k - i % 2) for i in range(rank))  # uneven kernels too
        padding = pad * rank if isinstance(pad, tuple) else pad
        module = nn.Conv(4, kernel, strides=stride, kernel_dilation=dil, padding=padding)
        ours = conv_patches(x, module)
        want = lax.conv_general_dilated_patches(
            x.reshape((-1, *spatial, 2)),
            kernel,
            (stride,) * rank,
            conv_padding(padding, rank),
            rhs_dilation=(dil,) * rank,
            dimension_numbers=spec,
            precision=lax.Precision.HIGHEST,
        )
        want = want.reshape((3, -1, want.shape[-1]))
        assert ours.shape == want.shape, (kernel, stride, dil, padding)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(want))
        checked += 1
    assert checked == 90


def test_conv_chunk_rule_by_hand(monkeypatch):
    from trainers.clipping import _rules

    # benchmark CNN's second conv at p = 256 (T = 64, 144 -> 32, direct):
    # w = 64·144 + 144·32 = 13 824; share 256·64·32 // (2w) = 18; floor 2^20 // (4w) = 18
    assert _rules.conv_chunk(256, 64, 144, 32, "direct") == 18
    # its first conv at p = 32 (T = 256, 27 -> 16): share 8, floor 35, capped at p
    assert _rules.conv_chunk(32, 256, 27, 16, "direct") == 32
    # a Gram-method conv (T = 4, 144 -> 16): w = 576 + 2·16 = 608, floor 431, capped at p
    assert _rules.conv_chunk(256, 4, 144, 16, "ghost") == 256
    monkeypatch.setattr(_rules, "PATCH_FLOOR_BYTES", 0)
    assert _rules.conv_chunk(256, 4, 144, 16, "ghost") == 13  # 16 384 // 1 216
    assert _rules.conv_chunk(7, 36, 18, 4, "direct") == 1  # never below one example


class _GroupedConvs(nn.Module):
    """A grouped conv (direct rule), a depthwise conv, and a grouped conv on a
    2×2 map with wide channels (Gram rule), frozen bias on one of them."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(8, (3, 3), feature_group_count=2, name="grouped")(x))
        x = jnp.tanh(nn.Conv(8, (3, 3), feature_group_count=8, name="depthwise")(x))
        x = nn.Conv(16, (3, 3), strides=3, feature_group_count=2, name="wide")(x)
        return nn.Dense(3)(jnp.tanh(x).reshape(x.shape[0], -1))


def test_grouped_and_depthwise_convolutions_equal_vmap():
    """Grouped convolutions: ‖∇kernel‖² = Σ_j ‖A_ijᵀG_ij‖² per group j, by both
    rules; vmap's per-example gradients are the oracle (norms and sums, with
    a NaN padding row and a frozen leaf)."""
    model = _GroupedConvs()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 6, 6, 4)).astype(np.float32)
    x[3] = np.nan
    y = rng.integers(0, 3, 5).astype(np.int32)
    params = model.init(jax.random.key(0), x[:1])["params"]

    def apply(p, xx):
        return model.apply({"params": p}, xx)

    ghost = GhostClipping(apply, softmax_cross_entropy, trainable_leaves(params))
    plan = ghost.plan(params, jax.ShapeDtypeStruct(x.shape[1:], x.dtype)).describe()
    assert "grouped (Conv): direct T=36 d_in=18 d_out=4 groups=2" in plan
    assert "depthwise (Conv): direct T=36 d_in=9 d_out=1 groups=8" in plan
    assert "wide (Conv): ghost T=4 d_in=36 d_out=8 groups=2" in plan
    frozen = jax.tree_util.tree_map_with_path(
        lambda path, _: "depthwise" in jax.tree_util.keystr(path)
        and "bias" in jax.tree_util.keystr(path),
        params,
    )
    for trainable in (trainable_leaves(params), trainable_leaves(params, frozen)):
        real = np.arange(5) != 3
        _, n1, s1 = _ghost_clip(apply, params, x, y, trainable, 0.5, jnp.asarray(real))
        # the oracle sees the real rows only: vmap's own per-example gradient of a
        # grouped convolution spreads one example's NaN to every example (JAX's
        # batching of the kernel gradient), which ghost clipping does not
        _, n0, s0 = _vmap_clip(apply, params, x[real], y[real], trainable, 0.5, jnp.ones(4, bool))
        np.testing.assert_allclose(np.asarray(n1)[real], np.asarray(n0), rtol=1e-4)
        assert not np.isfinite(np.asarray(n1)[3])
        for a, b in zip(s1, s0, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # and against the float64 reference trainer
    _assert_ghost_sum_is_the_references(apply, params, x, y, np.array([0, 1, 2, 4]), 0.05)


@pytest.mark.parametrize("clipping", ["vmap", "ghost"])
def test_a_nan_example_stays_its_own_with_grouped_convolutions(clipping):
    """One NaN example in a model with grouped convolutions: it alone is
    counted non-finite, and the step equals the step without it (same key,
    fixed denominator).  On the vmap path JAX's batching of the grouped
    kernel gradient would otherwise make every example NaN."""
    import optax

    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD

    model = _GroupedConvs()
    rng = np.random.default_rng(6)
    x = rng.normal(size=(12, 6, 6, 4)).astype(np.float32)
    x[3] = np.nan
    y = rng.integers(0, 3, 12).astype(np.int32)
    results = []
    for idx in (np.array([0, 1, 2, 3, 4, 5]), np.array([0, 1, 2, 4, 5])):
        params = model.init(jax.random.key(0), x[:1])["params"]
        config = DPSGDConfig(
            clip_norm=1.0,
            noise_multiplier=1.0,
            denominator=8.0,
            physical_batch_size=4,
            clipping=clipping,
        )
        trainer = MaskedDPSGD(
            lambda p, xb: model.apply({"params": p}, xb), optax.sgd(0.1), config
        )
        new, _, stats = trainer.step(
            params, optax.sgd(0.1).init(params), jnp.asarray(x), jnp.asarray(y), idx,
            jax.random.key(1), 0,
        )  # fmt: skip
        results.append((jax.tree_util.tree_leaves(new), stats.ledger_fields()))
    (with_nan, fields), (without, fields_clean) = results
    assert fields["num_nonfinite"] == 1 and fields_clean["num_nonfinite"] == 0
    assert fields["num_clipped"] == fields_clean["num_clipped"] > 0
    for a, b in zip(with_nan, without, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3])
def test_conv_norms_in_chunks_equal_vmap(monkeypatch, chunk):
    """The conv norms computed a few examples at a time (chunks that do and do
    not divide p, NaN padding rows inside a chunk) equal vmap's norms and sums."""
    from trainers.clipping import _rules

    monkeypatch.setattr(_rules, "conv_chunk", lambda *args: chunk)
    for model, shape in (
        (MODELS["cnn"][0], (6, 6, 2)),
        (_OddConvs(), (7, 6, 2)),
        (_GroupedConvs(), (6, 6, 4)),
    ):
        rng = np.random.default_rng(4)
        x = rng.normal(size=(7, *shape)).astype(np.float32)
        x[4] = np.nan  # a padding row in the second chunk
        y = rng.integers(0, 3, 7).astype(np.int32)
        params = model.init(jax.random.key(0), x[:1])["params"]

        def apply(p, xx, model=model):
            return model.apply({"params": p}, xx)

        trainable = trainable_leaves(params)
        real = np.arange(7) != 4
        ghost = jax.jit(functools.partial(_ghost_clip_eager, apply, trainable=trainable))
        _, n1, s1 = ghost(params, x, y, 0.5, jnp.asarray(real))
        _, n0, s0 = _vmap_clip(apply, params, x[real], y[real], trainable, 0.5, jnp.ones(6, bool))
        np.testing.assert_allclose(np.asarray(n1)[real], np.asarray(n0), rtol=1e-4)
        assert not np.isfinite(np.asarray(n1)[4])
        for a, b in zip(s1, s0, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


class _WithEinsum(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Einsum((4, 3), "bi,ij->bj", name="mixer")(x.reshape(x.shape[0], -1))


class _SharedDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = nn.Dense(4, name="shared")
        return dense(jnp.tanh(dense(x)))


class _Tied(nn.Module):
    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(5, 4, name="tied")
        return embed.attend(embed(ids).mean(axis=1))


class _Circular(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), padding="CIRCULAR", name="circular")(x)
        return x.mean(axis=(1, 2))


@pytest.mark.parametrize(
    ("model", "x", "needle"),
    [
        (_WithEinsum(), np.ones((2, 4), np.float32), "'mixer' (Einsum)"),
        (_SharedDense(), np.ones((2, 4), np.float32), "'shared' (Dense): called 2 times"),
        (_Tied(), np.ones((2, 3), np.int32), "'tied' (Embed)"),
        (_Circular(), np.ones((2, 5, 5, 4), np.float32), "'circular' (Conv): padding='CIRCULAR'"),
    ],
)
def test_unsupported_layer_is_one_line_error_naming_it(model, x, needle):
    params = model.init(jax.random.key(0), x[:1])["params"]
    ghost = GhostClipping(
        lambda p, xx: model.apply({"params": p}, xx),
        softmax_cross_entropy,
        trainable_leaves(params),
    )
    with pytest.raises(UnsupportedLayer) as info:
        ghost.plan(params, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert isinstance(info.value, InvalidArgument)


def test_frozen_unsupported_layer_is_no_error():
    model = _WithEinsum()
    x = np.ones((2, 4), np.float32)
    params = model.init(jax.random.key(0), x[:1])["params"]
    ghost = GhostClipping(
        lambda p, xx: model.apply({"params": p}, xx), softmax_cross_entropy, (False, False)
    )
    plan = ghost.plan(params, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
    assert plan.layers == () and plan.loose == ()


def _trainer(apply, clipping, p=3, clip=0.5, frozen=None):
    import optax

    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD

    cfg = DPSGDConfig(
        clip_norm=clip,
        noise_multiplier=0.7,
        denominator=4.0,
        physical_batch_size=p,
        clipping=clipping,
    )
    return MaskedDPSGD(apply, optax.sgd(0.1), cfg, frozen=frozen, donate=False)


@pytest.mark.parametrize("name", ["cnn", "text"])
def test_masked_step_ghost_equals_vmap_one_compilation(name):
    """The whole step (noise, denominator, update, statistics) agrees, and ghost
    compiles once whatever the batch sizes (0, one partial batch, several)."""
    apply, params, x, y = _setup(name)
    frozen = lambda path, _: "head" in jax.tree_util.keystr(path)  # noqa: E731
    ghost = _trainer(apply, "ghost", frozen=frozen)
    vmap = _trainer(apply, "vmap", frozen=frozen)
    key = jax.random.key(7)
    for t, idx in enumerate([np.arange(5), np.array([], np.int64), np.array([2]), np.arange(8)]):
        p1, _, s1 = ghost.step(params, ghost.optimizer.init(params), x, y, idx, key, t)
        p0, _, s0 = vmap.step(params, vmap.optimizer.init(params), x, y, idx, key, t)
        for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p0), strict=False):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert s1.num_clipped == s0.num_clipped and s1.batch_size == s0.batch_size
        np.testing.assert_allclose(s1.max_grad_norm, s0.max_grad_norm, rtol=1e-4)
        np.testing.assert_allclose(s1.update_sketch, s0.update_sketch, rtol=1e-4, atol=1e-6)
    assert ghost.clipping == "ghost" and vmap.clipping == "vmap"
    assert ghost.compilations == 1


def test_masked_step_non_finite_example_counted_and_excluded():
    apply, params, x, y = _setup("mlp")
    x = x.copy()
    x[3] = np.inf
    key = jax.random.key(3)
    out = {}
    for mode in ("ghost", "vmap"):
        tr = _trainer(apply, mode)
        out[mode] = tr.step(params, tr.optimizer.init(params), x, y, np.arange(6), key, 0)
    (p1, _, s1), (p0, _, s0) = out["ghost"], out["vmap"]
    assert s1.num_nonfinite == s0.num_nonfinite == 1
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p0), strict=False):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_auto_falls_back_to_vmap_and_ghost_refuses():
    model = _WithEinsum()
    x = np.ones((4, 4), np.float32)
    y = np.zeros(4, np.int32)
    params = model.init(jax.random.key(0), x[:1])["params"]

    def apply(p, xx):
        return model.apply({"params": p}, xx)

    auto = _trainer(apply, "auto")
    assert auto.resolve_clipping(params, x) == "vmap"
    assert "mixer" in auto.clipping_reason and "\n" not in auto.clipping_reason
    with pytest.raises(UnsupportedLayer, match="mixer"):
        _trainer(apply, "ghost").step(
            params, optax_state(params), x, y, np.arange(2), jax.random.key(0), 0
        )
    with pytest.raises(InvalidArgument, match="clipping='fast'"):
        _trainer(apply, "fast")


def optax_state(params):
    import optax

    return optax.sgd(0.1).init(params)
