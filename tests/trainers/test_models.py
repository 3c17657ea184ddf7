"""Models: logits of the right shape, batch independence, per-example gradients.

Per-example DP-SGD is only correct if an example's logits (hence its gradient)
depend on that example alone; these tests check it for every model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpverify.errors import InvalidArgument
from trainers.models import CNN, MLP, PAD_ID, VIT_TINY, TextTransformer, ViT

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("trainers.test_models")

NUM_CLASSES = 5
BATCH = 4


def _image_batch(seed: int, shape=(8, 8, 1)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(BATCH, *shape)).astype(np.float32)


def _token_batch(seed: int, length: int = 6, vocab: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, size=(BATCH, length))
    tokens[1, 3:] = PAD_ID  # a padded text
    return tokens.astype(np.int32)


MODELS = {
    "mlp": (lambda: MLP(num_classes=NUM_CLASSES, hidden=(16,)), _image_batch),
    "cnn": (lambda: CNN(num_classes=NUM_CLASSES, channels=(8, 8), groups=2), _image_batch),
    "vit": (lambda: ViT(num_classes=NUM_CLASSES, **VIT_TINY), _image_batch),
    "text": (
        lambda: TextTransformer(
            num_classes=NUM_CLASSES, vocab_size=20, width=16, depth=1, num_heads=2, mlp_dim=32
        ),
        _token_batch,
    ),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    make, batch = MODELS[request.param]
    model = make()
    x = batch(0)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"]
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    return request.param, model, params, apply, batch


def test_logits_shape_dtype_and_finite(built):
    _, _, params, apply, batch = built
    logits = apply(params, batch(1))
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))


def test_batch_independent(built):
    """Row 0's logits do not change when the other rows do (no cross-example mixing)."""
    _, _, params, apply, batch = built
    a, b = batch(1), batch(2)
    b[0] = a[0]
    out_a, out_b = np.asarray(apply(params, a)), np.asarray(apply(params, b))
    assert not np.allclose(out_a[1:], out_b[1:])  # the other rows did change
    np.testing.assert_allclose(out_a[0], out_b[0], rtol=1e-5, atol=1e-6)
    # ...and equal the logits of row 0 evaluated alone.
    np.testing.assert_allclose(np.asarray(apply(params, a[:1]))[0], out_a[0], rtol=1e-5, atol=1e-6)


def test_per_example_grads_by_vmap(built):
    """vmap(grad) equals a Python loop of single-example gradients; they sum to the batch gradient."""
    _, model, params, _, batch = built
    x = batch(3)
    y = np.arange(BATCH) % NUM_CLASSES

    def loss(p, xi, yi):
        logits = model.apply({"params": p}, xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, x, y)
    single = jax.jit(jax.grad(loss))
    for i in range(BATCH):
        expected = single(params, x[i], y[i])
        got = jax.tree_util.tree_map(lambda g, i=i: g[i], per_example)
        for e, g in zip(
            jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got), strict=True
        ):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)

    def batch_loss(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

    total = jax.jit(jax.grad(batch_loss))(params)
    for s, t in zip(
        jax.tree_util.tree_leaves(per_example), jax.tree_util.tree_leaves(total), strict=True
    ):
        np.testing.assert_allclose(np.asarray(s).sum(axis=0), t, rtol=1e-4, atol=1e-5)


def test_greyscale_without_channel_axis():
    model = CNN(num_classes=3, channels=(4,), groups=2)
    x = np.zeros((2, 8, 8), np.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
    assert jax.jit(model.apply)({"params": params}, x).shape == (2, 3)


def test_vit_small_config_shapes():
    """The ViT-Small-like benchmark config builds on 32×32 inputs (shapes only, no compile)."""
    from trainers.models import VIT_SMALL

    model = ViT(num_classes=10, **VIT_SMALL)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    n = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
    assert 10_000_000 < n < 12_000_000  # ≈ 10.7 M parameters, like ViT-S at depth 6
    assert shapes["params"]["pos_embedding"].shape == (1, 64, 384)


def test_bf16_compute_returns_float32_logits():
    model = CNN(num_classes=3, channels=(4,), groups=2, dtype=jnp.bfloat16)
    x = _image_batch(0)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
    assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
    out = jax.jit(model.apply)({"params": params}, x)
    assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))


def test_text_all_padding_is_finite_and_padding_ignored():
    model = TextTransformer(num_classes=2, vocab_size=10, width=8, depth=1, num_heads=2, mlp_dim=8)
    tokens = np.array([[0, 0, 0, 0], [3, 4, 0, 0]], np.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)["params"]
    out, grads = jax.jit(jax.value_and_grad(lambda p: model.apply({"params": p}, tokens).sum()))(
        params
    )
    assert np.isfinite(float(out))
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    # Real tokens never attend to padding and padding is not pooled, so padding
    # positions get no gradient through the position embedding.
    pos_grad = np.asarray(grads["pos_embedding"])[0]
    np.testing.assert_array_equal(pos_grad[2:], 0.0)


@pytest.mark.parametrize(
    ("model", "x", "match"),
    [
        (ViT(num_classes=2, width=10, num_heads=3), np.zeros((1, 8, 8, 1)), "width=10"),
        (ViT(num_classes=2, patch_size=3), np.zeros((1, 8, 8, 1)), "patch_size=3"),
        (CNN(num_classes=2, activation="swish"), np.zeros((1, 8, 8, 1)), "activation='swish'"),
        (CNN(num_classes=2, channels=(6,), groups=4), np.zeros((1, 8, 8, 1)), "channels=6"),
    ],
)
def test_bad_configuration_is_invalid_argument(model, x, match):
    with pytest.raises(InvalidArgument, match=match) as info:
        model.init(jax.random.PRNGKey(0), x)
    assert "\n" not in str(info.value)
