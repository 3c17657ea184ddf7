"""Canary design (dpverify.empirical.canaries): secret, deterministic, norm C, disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from dpverify.empirical.canaries import (
    canary_key_digest,
    design_canaries,
    flatten_params,
    new_canary_key,
    param_leaves,
)
from dpverify.errors import InvalidArgument

KEY = bytes(range(32))


def test_design_is_deterministic_from_the_key_and_differs_across_keys():
    a = design_canaries(KEY, count=200, num_params=5000, clip_norm=2.0)
    b = design_canaries(KEY, count=200, num_params=5000, clip_norm=2.0)
    c = design_canaries(new_canary_key(), count=200, num_params=5000, clip_norm=2.0)
    assert np.array_equal(a.included, b.included) and np.array_equal(a.coordinates, b.coordinates)
    assert not np.array_equal(a.coordinates, c.coordinates)


def test_directions_have_norm_c_on_disjoint_coordinates():
    d = design_canaries(KEY, count=300, num_params=4000, clip_norm=3.0)
    assert d.coordinates.shape == (300, 13)  # s = min(16, 4000 // 300)
    assert np.allclose(np.linalg.norm(d.values, axis=1), 3.0)
    assert np.unique(d.coordinates).size == d.coordinates.size
    assert d.coordinates.min() >= 0 and d.coordinates.max() < 4000


def test_inclusion_bits_are_fair_coins():
    """Two-sided binomial test at 1e-4 (fixed key, so deterministic)."""
    from scipy import stats

    d = design_canaries(KEY, count=20000, num_params=20000, clip_norm=1.0)
    k = int(d.included.sum())
    assert stats.binomtest(k, 20000, 0.5).pvalue > 1e-4


def test_clipped_sum_counts_only_included_canaries():
    d = design_canaries(KEY, count=50, num_params=1000, clip_norm=1.5)
    inc = np.flatnonzero(d.included)
    exc = np.flatnonzero(~d.included)
    assert not d.clipped_sum(exc).any()
    total = d.clipped_sum(inc[:3])
    assert np.linalg.norm(total) == pytest.approx(1.5 * np.sqrt(3))
    with pytest.raises(InvalidArgument):
        d.clipped_sum([50])


def test_scores_rise_for_canaries_descended_along():
    d = design_canaries(KEY, count=40, num_params=800, clip_norm=1.0)
    theta0 = np.random.default_rng(0).normal(size=800)
    theta1 = theta0 - 0.1 * d.clipped_sum(np.arange(40))  # one SGD step with every canary
    s = d.scores(theta0, theta1)
    assert np.all(s[d.included] > 0.09) and np.allclose(s[~d.included], 0.0)
    with pytest.raises(InvalidArgument):
        d.scores(theta0[:5], theta1)


def test_flattening_sorts_key_paths_like_jax():
    tree = {"b": {"kernel": np.ones((2, 2)), "bias": np.zeros(2)}, "a": {"w": np.arange(3.0)}}
    assert [p for p, _ in param_leaves(tree)] == [("a", "w"), ("b", "bias"), ("b", "kernel")]
    assert flatten_params(tree).tolist() == [0, 1, 2, 0, 0, 1, 1, 1, 1]
    jax = pytest.importorskip("jax")
    leaves = jax.tree_util.tree_leaves(tree)
    assert np.array_equal(np.concatenate([np.ravel(x) for x in leaves]), flatten_params(tree))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": 0, "num_params": 10, "clip_norm": 1.0},
        {"count": 11, "num_params": 10, "clip_norm": 1.0},
        {"count": 2, "num_params": 10, "clip_norm": 0.0},
    ],
)
def test_bad_designs_are_refused(kwargs):
    with pytest.raises(InvalidArgument):
        design_canaries(KEY, **kwargs)
    with pytest.raises(InvalidArgument):
        design_canaries(b"short", count=1, num_params=10, clip_norm=1.0)


def test_digest_is_sha256_hex():
    assert len(canary_key_digest(KEY)) == 64 and canary_key_digest(KEY) != canary_key_digest(b"x")
