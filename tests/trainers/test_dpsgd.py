"""Tests for trainers.dpsgd: the masked step against the float64 reference, one
compilation whatever the batch sizes, NaN-safe padding, noise calibration, precisions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

from dpverify.errors import InvalidArgument
from dpverify.ledger.records import Step
from dpverify.samplers import PoissonSampler
from trainers.dpsgd import DPSGDConfig, MaskedDPSGD, gaussian_noise, trainable_leaves
from trainers.models import MLP
from trainers.precision import sketch_tolerance
from trainers.reference import reference_step
from trainers.sketch import compare_sketches

N = 48
_APPLY = {}


def _apply_for(hidden):
    # One function object per architecture, so the reference's jit cache is reused.
    if hidden not in _APPLY:
        model = MLP(num_classes=3, hidden=hidden)
        _APPLY[hidden] = (model, lambda p, x: model.apply({"params": p}, x))
    return _APPLY[hidden]


def _problem(hidden=(5,), dim=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, dim)).astype(np.float32)
    y = rng.integers(0, 3, N).astype(np.int32)
    model, apply = _apply_for(hidden)
    params = model.init(jax.random.key(seed), x[:1])["params"]
    return x, y, params, apply


def _copy(tree):
    return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), tree)


def _max_dev(a, b):
    return max(
        float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


_CASE = st.fixed_dictionaries(
    {
        "hidden": st.sampled_from([(3,), (4, 2)]),
        "dim": st.sampled_from([2, 5]),
        "p": st.sampled_from([1, 3, 4]),
        "frac": st.floats(0, 1),
        "clip_norm": st.floats(0.05, 3.0),
        "sigma": st.sampled_from([0.0, 0.8, 2.5]),
        "opt": st.sampled_from(["sgd", "adam"]),
        "seed": st.integers(0, 1000),
    }
)


@settings(max_examples=4, deadline=None)
@given(_CASE)
@example(
    {
        "hidden": (5,),
        "dim": 4,
        "p": 4,
        "frac": 0.0,
        "clip_norm": 0.5,
        "sigma": 1.0,
        "opt": "sgd",
        "seed": 1,
    }
)  # L = 0
@example(
    {
        "hidden": (5,),
        "dim": 4,
        "p": 4,
        "frac": 1.0,
        "clip_norm": 0.5,
        "sigma": 1.0,
        "opt": "adam",
        "seed": 2,
    }
)  # L = 4p + 3: several physical batches plus padding
def test_masked_step_equals_reference_step(case):
    x, y, params, apply = _problem(case["hidden"], case["dim"], case["seed"])
    p = case["p"]
    L = round(case["frac"] * (4 * p + 3))
    rng = np.random.default_rng(case["seed"])
    idx = np.sort(rng.choice(N, L, replace=False))
    opt = optax.sgd(0.3) if case["opt"] == "sgd" else optax.adam(0.01)
    D = 7.5
    cfg = DPSGDConfig(
        clip_norm=case["clip_norm"],
        noise_multiplier=case["sigma"],
        denominator=D,
        physical_batch_size=p,
    )
    trainer = MaskedDPSGD(apply, opt, cfg)
    key = jax.random.key(case["seed"] + 1)
    state = opt.init(params)
    ref_params, _, ref = reference_step(
        apply,
        opt,
        params,
        state,
        x,
        y,
        idx,
        clip_norm=case["clip_norm"],
        noise_multiplier=case["sigma"],
        denominator=D,
        noise_key=key,
        step=3,
    )
    new_params, _, s = trainer.step(_copy(params), _copy(state), x, y, idx, key, 3)

    assert _max_dev(new_params, ref_params) < 1e-5
    cmp = compare_sketches(s.update_sketch, ref.update_sketch, precision="float32")
    assert cmp.ok or np.max(np.abs(ref.update_sketch)) < 1e-6, cmp
    assert s.batch_size == L and s.physical_batches == -(-L // p)
    assert s.num_clipped == ref.num_clipped
    assert s.max_grad_norm == pytest.approx(ref.max_grad_norm, rel=1e-5, abs=1e-6)
    assert s.max_clipped_norm == pytest.approx(ref.max_clipped_norm, rel=1e-5, abs=1e-6)
    assert s.max_clipped_norm <= case["clip_norm"] * (1 + 1e-6)
    assert s.noise_std == pytest.approx(case["sigma"] * case["clip_norm"])
    assert s.noise_draws == 1 and s.denominator == D
    if L:
        assert s.loss == pytest.approx(ref.loss, rel=1e-5)
    else:
        assert math.isnan(s.loss) and math.isnan(ref.loss)
    assert trainer.compilations == 1


def test_one_compilation_across_varied_batch_sizes():
    x, y, params, apply = _problem()
    opt = optax.adam(1e-2)
    p = 4
    trainer = MaskedDPSGD(
        apply,
        opt,
        DPSGDConfig(clip_norm=1.0, noise_multiplier=1.0, denominator=6.0, physical_batch_size=p),
    )
    sampler = PoissonSampler(N, 6 / N, seed=5)
    state = opt.init(params)
    key = jax.random.key(0)
    forced = {
        3: np.arange(0),
        7: np.arange(1),
        11: np.arange(p),
        15: np.arange(7 * p + 1),
        19: np.arange(N),
    }
    seen = set()
    for t in range(24):
        idx = forced.get(t, sampler.sample(t))
        params, state, s = trainer.step(params, state, x, y, idx, key, t)
        seen.add(s.physical_batches)
        assert s.batch_size == len(idx)
    assert {0, 1, 8, 12} <= seen  # includes new counts of physical batches
    assert trainer.compilations == 1
    # L = 7p + 1 and L = N overflow the one-dispatch buffer: the fallback compiled
    # once too, its 1-row tail batch for L = 7p + 1's last row of one example (the
    # 2-row tail is compiled at its first use: none here).
    assert trainer.cache_sizes() == {
        "fused": 1,
        "init": 1,
        "accumulate": 1,
        "accumulate_tail_1": 1,
        "accumulate_tail_2": 0,
        "finalize": 1,
    }
    # The counter can fail: a data set of another shape forces a retrace.
    x2, y2 = np.concatenate([x, x]), np.concatenate([y, y])
    trainer.step(params, state, x2, y2, np.arange(5), key, 24)
    assert trainer.compilations == 2


# tail_batch_size: 0 pads the last physical batch to p = 4 rows (3 padding rows);
# 2 runs it as a tail batch of 2 rows (1 padding row).  (The default, tails of 1
# and 2 rows, runs this one-example batch without padding.)
@pytest.mark.parametrize(("tail", "padding"), [(0, 3), (2, 1)])
@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_nan_or_inf_padding_does_not_change_the_update(poison, tail, padding):
    x, y, params, apply = _problem()
    bad = 40
    x = x.copy()
    x[bad] = poison
    opt = optax.sgd(0.1)
    cfg = DPSGDConfig(clip_norm=0.5, noise_multiplier=1.0, denominator=5.0, physical_batch_size=4)
    idx = np.array([1, 5, 6, 9, 20])  # 5 = 4 + 1: the last physical batch is mostly padding
    key = jax.random.key(2)
    clean_p, _, clean = MaskedDPSGD(apply, opt, cfg, donate=False, tail_batch_size=tail).step(
        params, opt.init(params), x, y, idx, key, 0
    )
    pois_p, _, pois = MaskedDPSGD(apply, opt, cfg, donate=False, tail_batch_size=tail).step(
        params, opt.init(params), x, y, idx, key, 0, pad_index=bad
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(clean_p), jax.tree_util.tree_leaves(pois_p), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert clean == pois and pois.num_nonfinite == 0  # padding is not an example
    # A trainer that forgets the mask counts the poisoned padding rows as (non-finite) examples.
    wrong = MaskedDPSGD(
        apply,
        opt,
        DPSGDConfig(
            clip_norm=0.5,
            noise_multiplier=1.0,
            denominator=5.0,
            physical_batch_size=4,
            mutation="unmasked_padding",
        ),
        donate=False,
        tail_batch_size=tail,
    )
    _, _, wrong_stats = wrong.step(params, opt.init(params), x, y, idx, key, 0, pad_index=bad)
    assert wrong_stats.num_nonfinite == padding


def _noise_chi2_pvalue(mutation=None, steps=30):
    """Two-sided p-value of Σ v²/s² ~ χ²_n for the updates of empty steps, s = σC/D."""
    x, y, params, apply = _problem(hidden=(6,))
    params = jax.tree_util.tree_map(jnp.zeros_like, params)
    sigma, C, D = 1.3, 2.0, 4.0
    cfg = DPSGDConfig(
        clip_norm=C, noise_multiplier=sigma, denominator=D, physical_batch_size=4, mutation=mutation
    )
    opt = optax.sgd(1.0)
    trainer = MaskedDPSGD(apply, opt, cfg, donate=False)
    state = opt.init(params)
    key = jax.random.key(99)
    draws = []
    for t in range(steps):
        new, _, _ = trainer.step(params, state, x, y, np.arange(0), key, t)
        draws.append(np.concatenate([-np.ravel(a) for a in jax.tree_util.tree_leaves(new)]))
    v = np.concatenate(draws).astype(np.float64) / (sigma * C / D)
    s = float(np.sum(v**2))
    return 2 * min(stats.chi2.cdf(s, v.size), stats.chi2.sf(s, v.size)), v


def test_empirical_noise_std_is_sigma_c_over_denominator():
    # False-positive rate: the test rejects a correct trainer with probability 1e-3
    # (two-sided chi-square test on n = 30 steps x 45 parameters = 1350 draws).  The
    # seed is fixed, so the outcome is deterministic.
    pvalue, v = _noise_chi2_pvalue()
    assert pvalue > 1e-3
    assert abs(np.mean(v)) < 4 / np.sqrt(v.size)
    # The same test rejects noise of std sigma instead of sigma * C (C = 2).
    bad, _ = _noise_chi2_pvalue("noise_std_sigma", steps=5)
    assert bad < 1e-6


def test_noise_is_fold_in_of_the_step():
    x, y, params, apply = _problem()
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    opt = optax.sgd(1.0)
    cfg = DPSGDConfig(clip_norm=1.5, noise_multiplier=2.0, denominator=3.0, physical_batch_size=4)
    key = jax.random.key(4)
    new, _, _ = MaskedDPSGD(apply, opt, cfg, donate=False).step(
        zeros, opt.init(zeros), x, y, np.arange(0), key, 17
    )
    want = gaussian_noise(key, 17, zeros)
    for a, z in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), -3.0 / 3.0 * np.asarray(z), rtol=1e-6)


def test_frozen_parameters_get_no_update_and_no_norm():
    x, y, params, apply = _problem(hidden=(4,))
    opt = optax.adamw(0.05, weight_decay=0.1)
    frozen = lambda path, leaf: "Dense_0" in jax.tree_util.keystr(path)  # noqa: E731
    assert trainable_leaves(params, frozen).count(False) == 2
    cfg = DPSGDConfig(clip_norm=0.3, noise_multiplier=1.0, denominator=5.0, physical_batch_size=4)
    idx = np.arange(0, 20, 2)
    key = jax.random.key(8)
    new, _, s = MaskedDPSGD(apply, opt, cfg, frozen=frozen, donate=False).step(
        params, opt.init(params), x, y, idx, key, 0
    )
    np.testing.assert_array_equal(
        np.asarray(new["Dense_0"]["kernel"]), np.asarray(params["Dense_0"]["kernel"])
    )
    assert not np.array_equal(
        np.asarray(new["Dense_1"]["kernel"]), np.asarray(params["Dense_1"]["kernel"])
    )
    ref_p, _, ref = reference_step(
        apply,
        opt,
        params,
        opt.init(params),
        x,
        y,
        idx,
        clip_norm=0.3,
        noise_multiplier=1.0,
        denominator=5.0,
        noise_key=key,
        step=0,
        frozen=frozen,
    )
    assert _max_dev(new, ref_p) < 1e-5
    assert s.max_grad_norm == pytest.approx(ref.max_grad_norm, rel=1e-5)
    assert compare_sketches(s.update_sketch, ref.update_sketch).ok


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precisions_run_and_match_within_their_tolerance(precision):
    x, y, params, apply = _problem()
    opt = optax.sgd(0.1)
    cfg = DPSGDConfig(
        clip_norm=0.5,
        noise_multiplier=0.0,
        denominator=8.0,
        physical_batch_size=4,
        precision=precision,
    )
    trainer = MaskedDPSGD(apply, opt, cfg, donate=False)
    key = jax.random.key(1)
    idx = np.arange(3, 14)
    _, _, s = trainer.step(params, opt.init(params), x, y, idx, key, 0)
    _, _, ref = reference_step(
        apply,
        opt,
        params,
        opt.init(params),
        x,
        y,
        idx,
        clip_norm=0.5,
        noise_multiplier=0.0,
        denominator=8.0,
        noise_key=key,
        step=0,
    )
    cmp = compare_sketches(s.update_sketch, ref.update_sketch, precision=precision)
    assert cmp.ok, cmp
    if precision == "bf16":  # bf16 compute really happened: visibly less exact than float32
        assert cmp.max_rel_deviation > sketch_tolerance("float32")


def test_params_are_donated_by_default_and_stats_fit_the_ledger():
    x, y, params, apply = _problem()
    opt = optax.sgd(0.1)
    cfg = DPSGDConfig(clip_norm=1.0, noise_multiplier=1.0, denominator=8.0, physical_batch_size=8)
    trainer = MaskedDPSGD(apply, opt, cfg)
    mine = _copy(params)
    idx = np.array([2, 3, 5])
    new, _, s = trainer.step(mine, opt.init(mine), x, y, idx, jax.random.key(0), 0)
    assert all(a.is_deleted() for a in jax.tree_util.tree_leaves(mine))
    assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves(new))
    record = Step(step=0, indices=idx, **s.ledger_fields())
    assert record.physical_batches == 1 and len(record.update_sketch) == 8


@pytest.mark.parametrize(
    "bad",
    [
        {"clip_norm": 0.0},
        {"clip_norm": -1.0},
        {"clip_norm": math.inf},
        {"noise_multiplier": -0.5},
        {"denominator": 0.0},
        {"physical_batch_size": 0},
        {"physical_batch_size": 2.5},
        {"precision": "fp8"},
        {"mutation": "bogus"},
        {"sketch_dim": 0},
    ],
)
def test_invalid_config_is_rejected(bad):
    kw = dict(clip_norm=1.0, noise_multiplier=1.0, denominator=8.0, physical_batch_size=8)
    kw.update(bad)
    with pytest.raises(InvalidArgument, match=next(iter(bad))):
        DPSGDConfig(**kw)


def test_invalid_step_arguments():
    x, y, params, apply = _problem()
    opt = optax.sgd(0.1)
    cfg = DPSGDConfig(clip_norm=1.0, noise_multiplier=1.0, denominator=8.0, physical_batch_size=8)
    trainer = MaskedDPSGD(apply, opt, cfg, donate=False)
    with pytest.raises(InvalidArgument):
        trainer.step(params, opt.init(params), x, y, np.arange(3), jax.random.key(0), -1)
    with pytest.raises(InvalidArgument):
        trainer.step(params, opt.init(params), x, y, np.array([[1]]), jax.random.key(0), 0)
    with pytest.raises(InvalidArgument):
        MaskedDPSGD(apply, opt, {"clip_norm": 1.0})


@pytest.mark.parametrize("name", ["cnn", "text"])
def test_conv_and_token_models_match_reference(name):
    from trainers.models import CNN, TextTransformer

    rng = np.random.default_rng(0)
    n = 12
    if name == "cnn":  # convolutions + GroupNorm
        model = CNN(num_classes=3, channels=(4,), groups=2)
        x = rng.random((n, 6, 6, 1)).astype(np.float32)
    else:  # integer token inputs, embeddings, attention
        model = TextTransformer(
            num_classes=3, vocab_size=20, width=8, depth=1, num_heads=2, mlp_dim=8
        )
        x = rng.integers(0, 20, (n, 5)).astype(np.int32)
    y = rng.integers(0, 3, n).astype(np.int32)
    apply = lambda p, xb: model.apply({"params": p}, xb)  # noqa: E731
    params = model.init(jax.random.key(0), x[:1])["params"]
    opt = optax.sgd(0.1)
    cfg = DPSGDConfig(clip_norm=0.3, noise_multiplier=0.5, denominator=4.0, physical_batch_size=3)
    idx = np.array([0, 2, 3, 7, 11])
    key = jax.random.key(1)
    new, _, s = MaskedDPSGD(apply, opt, cfg, donate=False).step(
        params, opt.init(params), x, y, idx, key, 0
    )
    ref_p, _, ref = reference_step(
        apply,
        opt,
        params,
        opt.init(params),
        x,
        y,
        idx,
        clip_norm=0.3,
        noise_multiplier=0.5,
        denominator=4.0,
        noise_key=key,
        step=0,
    )
    assert compare_sketches(s.update_sketch, ref.update_sketch).ok
    assert _max_dev(new, ref_p) < 1e-5


_NONFINITE_TRAINERS: dict = {}


def _nonfinite_trainer(fused):
    if fused not in _NONFINITE_TRAINERS:
        x, y, params, apply = _problem()
        cfg = DPSGDConfig(
            clip_norm=0.5, noise_multiplier=1.0, denominator=5.0, physical_batch_size=4
        )
        trainer = MaskedDPSGD(apply, optax.sgd(0.1), cfg, donate=False, fused_batches=fused)
        _NONFINITE_TRAINERS[fused] = (trainer, x, y, params, apply)
    return _NONFINITE_TRAINERS[fused]


@settings(max_examples=12, deadline=None)
@given(
    size=st.integers(1, 9),
    poisoned=st.sets(st.integers(0, 8), max_size=4),
    pad_poisoned=st.booleans(),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
    fused=st.sampled_from([None, 0]),
)
def test_nonfinite_examples_contribute_exactly_zero(size, poisoned, pad_poisoned, value, fused):
    """Inf/NaN inputs at any positions among the real rows (and/or in the padding):
    each poisoned real example adds exactly zero and is counted; the update stays
    finite and equals the float64 reference, which drops the same examples."""
    trainer, x, y, params, apply = _nonfinite_trainer(fused)
    idx = np.arange(0, 2 * size, 2)  # real rows 0, 2, …; odd rows are free for padding
    x = x.copy()
    bad_real = sorted(i for i in poisoned if i < size)
    x[idx[bad_real]] = value
    pad = 1
    if pad_poisoned:
        x[pad] = value
    key = jax.random.key(5)
    opt = optax.sgd(0.1)
    new, _, stats = trainer.step(params, opt.init(params), x, y, idx, key, 3, pad_index=pad)
    assert stats.num_nonfinite == len(bad_real)
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(new))
    assert np.isfinite(stats.max_grad_norm) and stats.max_clipped_norm <= 0.5 * (1 + 1e-6)
    ref_params, _, ref = reference_step(
        apply,
        opt,
        params,
        opt.init(params),
        x,
        y,
        idx,
        clip_norm=0.5,
        noise_multiplier=1.0,
        denominator=5.0,
        noise_key=key,
        step=3,
    )
    assert ref.num_nonfinite == len(bad_real)
    assert _max_dev(new, ref_params) < 1e-5
