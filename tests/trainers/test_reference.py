"""Tests for trainers.reference, checked against closed-form softmax-regression gradients."""

import math

import jax
import numpy as np
import optax
import pytest

from dpverify.errors import InvalidArgument
from trainers.dpsgd import gaussian_noise
from trainers.reference import reference_noisy_gradient, reference_step


def _linear_apply(p, x):
    return x @ p["w"] + p["b"]


def _setup(seed=0, n=30, d=4, c=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, c, n).astype(np.int32)
    params = {
        "b": rng.normal(size=(c,)).astype(np.float32),
        "w": rng.normal(size=(d, c)).astype(np.float32),
    }
    return x, y, params


def _closed_form(params, x, y, idx, C, sigma, D, key, step):
    """DP-SGD by hand: softmax regression gradients are (softmax - onehot) ⊗ x."""
    w, b = params["w"].astype(np.float64), params["b"].astype(np.float64)
    sums = {"b": np.zeros_like(b), "w": np.zeros_like(w)}
    for i in idx:
        xi = x[i].astype(np.float64)
        z = xi @ w + b
        pr = np.exp(z - z.max())
        pr /= pr.sum()
        err = pr - np.eye(len(b))[y[i]]
        gw, gb = np.outer(xi, err), err
        norm = math.sqrt(np.sum(gw**2) + np.sum(gb**2))
        f = min(1.0, C / norm)
        sums["w"] += f * gw
        sums["b"] += f * gb
    noise = gaussian_noise(key, step, params)
    return {k: (sums[k] + sigma * C * np.asarray(noise[k], np.float64)) / D for k in sums}


@pytest.mark.parametrize("size", [0, 1, 7, 30])
def test_reference_matches_closed_form(size):
    x, y, params = _setup()
    idx = np.sort(np.random.default_rng(size).choice(len(x), size, replace=False))
    key = jax.random.key(11)
    kw = dict(clip_norm=0.7, noise_multiplier=1.3, denominator=6.0, noise_key=key, step=4)
    ref = reference_noisy_gradient(_linear_apply, params, x, y, idx, **kw)
    want = _closed_form(params, x, y, idx, 0.7, 1.3, 6.0, key, 4)
    for k in want:
        assert ref.gradient[k].dtype == np.float64
        np.testing.assert_allclose(ref.gradient[k], want[k], rtol=1e-12, atol=1e-13)
    assert ref.batch_size == size
    assert ref.noise_std == pytest.approx(0.91) and ref.denominator == 6.0
    assert ref.max_clipped_norm <= 0.7 + 1e-12
    if size == 0:
        assert math.isnan(ref.loss) and ref.max_grad_norm == 0.0 and ref.num_clipped == 0
    else:
        assert (ref.num_clipped >= 1) == (ref.max_grad_norm > 0.7)
        assert ref.num_clipped >= 1 or size < 7


def test_noise_depends_on_step_and_key():
    x, y, params = _setup()
    kw = dict(clip_norm=1.0, noise_multiplier=1.0, denominator=1.0)
    empty = np.zeros(0, dtype=np.int64)
    a = reference_noisy_gradient(
        _linear_apply, params, x, y, empty, noise_key=jax.random.key(1), step=0, **kw
    )
    b = reference_noisy_gradient(
        _linear_apply, params, x, y, empty, noise_key=jax.random.key(1), step=1, **kw
    )
    c = reference_noisy_gradient(
        _linear_apply, params, x, y, empty, noise_key=jax.random.key(2), step=0, **kw
    )
    assert not np.allclose(a.gradient["w"], b.gradient["w"])
    assert not np.allclose(a.gradient["w"], c.gradient["w"])
    assert a.update_sketch != b.update_sketch


def test_frozen_leaves_excluded_from_norm_and_update():
    x, y, params = _setup()
    idx = np.arange(10)
    kw = dict(clip_norm=0.5, noise_multiplier=1.0, denominator=5.0)
    kw.update(noise_key=jax.random.key(0), step=0)
    ref = reference_noisy_gradient(
        _linear_apply, params, x, y, idx, frozen={"b": True, "w": False}, **kw
    )
    assert np.all(ref.gradient["b"] == 0)
    full = reference_noisy_gradient(_linear_apply, params, x, y, idx, **kw)
    assert ref.max_grad_norm < full.max_grad_norm  # bias gradient no longer counted


def test_reference_step_applies_the_optimizer_in_float64():
    x, y, params = _setup()
    opt = optax.sgd(0.5)
    idx = np.arange(5)
    kw = dict(clip_norm=1.0, noise_multiplier=0.5, denominator=5.0)
    kw.update(noise_key=jax.random.key(3), step=2)
    new, _state, ref = reference_step(_linear_apply, opt, params, opt.init(params), x, y, idx, **kw)
    for k in params:
        assert new[k].dtype == np.float64
        np.testing.assert_allclose(new[k], params[k] - 0.5 * ref.gradient[k], rtol=1e-14)
    frozen_new, _, _ = reference_step(
        _linear_apply,
        opt,
        params,
        opt.init(params),
        x,
        y,
        idx,
        frozen={"b": True, "w": False},
        **kw,
    )
    np.testing.assert_array_equal(frozen_new["b"], params["b"])


@pytest.mark.parametrize(
    "bad", [{"clip_norm": 0.0}, {"noise_multiplier": -1.0}, {"denominator": 0.0}, {"step": -1}]
)
def test_invalid_hyperparameters(bad):
    x, y, params = _setup()
    kw = dict(clip_norm=1.0, noise_multiplier=1.0, denominator=1.0)
    kw.update(noise_key=jax.random.key(0), step=0)
    kw.update(bad)
    with pytest.raises(InvalidArgument):
        reference_noisy_gradient(_linear_apply, params, x, y, np.arange(3), **kw)
