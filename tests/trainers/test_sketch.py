"""Tests for trainers.sketch: the update sketch recorded per step and its comparison."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers.sketch import SKETCH_SEED, compare_sketches, sketch_jax, update_sketch


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a": {"kernel": rng.normal(size=(7, 5)), "bias": rng.normal(size=(5,))},
        "b": rng.normal(size=(3, 2, 4)),
        "empty": np.zeros((0,)),
    }


def test_jax_and_numpy_sketches_agree():
    tree = _tree()
    ref = np.array(update_sketch(tree))
    fast = np.asarray(jax.jit(sketch_jax)(jax.tree_util.tree_map(jnp.asarray, tree)))
    assert ref.shape == fast.shape == (8,)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5 * np.sqrt(np.mean(ref**2)))


def test_sketch_is_linear_and_pinned():
    a, b = _tree(1), _tree(2)
    combo = jax.tree_util.tree_map(lambda u, v: 2 * u - 3 * v, a, b)
    np.testing.assert_allclose(
        update_sketch(combo), 2 * np.array(update_sketch(a)) - 3 * np.array(update_sketch(b))
    )
    # Pinned directions: the sketch of a one-hot parameter is ±1 per projection.
    s = update_sketch({"w": np.eye(1, 4, 2)}, k=8, seed=SKETCH_SEED)
    assert set(s) <= {1.0, -1.0} and len(set(s)) == 2
    assert update_sketch({"w": np.eye(1, 4, 2)}, k=8, seed=SKETCH_SEED + 1) != s


def test_sketch_scale_is_the_gradient_norm():
    # Rademacher projections: E[s_j^2] = ||g||^2.  With 8 x 50 draws the mean ratio
    # has standard error ~ sqrt(2/400) = 0.07; the bounds are 5 standard errors wide.
    ratios = []
    for seed in range(50):
        g = np.random.default_rng(seed).normal(size=(300,))
        ratios.extend(np.array(update_sketch({"g": g})) ** 2 / np.sum(g**2))
    assert 0.65 < np.mean(ratios) < 1.35


def test_compare_sketches():
    ref = (1.0, -2.0, 0.5, 3.0)
    ok = compare_sketches(tuple(v * (1 + 1e-7) for v in ref), ref)
    assert ok.ok and ok.max_rel_deviation < 1e-6 and ok.tolerance == 1e-5
    bad = compare_sketches((1.0, -2.0, 0.5, 3.1), ref)
    assert not bad.ok and bad.max_abs_deviation == pytest.approx(0.1)
    assert compare_sketches((1.0, -2.0, 0.5, 3.05), ref, precision="bf16").ok
    assert not compare_sketches((1.0,), ref).ok
    nan = compare_sketches((math.nan, -2.0, 0.5, 3.0), ref)
    assert not nan.ok
    assert compare_sketches((0.0, 0.0), (0.0, 0.0)).ok
