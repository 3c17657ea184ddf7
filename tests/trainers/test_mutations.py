"""Tests for trainers.mutations: every deliberately wrong trainer is caught by replay.

Each mutated trainer must (a) record the configured values a naive implementation
believes (noise_std = σC, noise_draws = 1, denominator = q·N) and (b) produce an
update sketch that the float64 reference does not reproduce, on inputs where its
bug is not a no-op (C ≠ 1, σ > 0, L not a multiple of p, some norms above C).
"""

import jax
import numpy as np
import optax
import pytest

from dpverify.errors import InvalidArgument
from trainers.dp_math import PRODUCTION
from trainers.dpsgd import DPSGDConfig, MaskedDPSGD
from trainers.models import MLP
from trainers.mutations import MUTATIONS, check_mutation, mechanics_for
from trainers.reference import reference_step
from trainers.sketch import compare_sketches

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("trainers.test_mutations")

N, C, SIGMA, D, P = 40, 0.5, 1.1, 10.0, 4
_MODEL = MLP(num_classes=3, hidden=(5,))


def _apply(p, x):
    return _MODEL.apply({"params": p}, x)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    y = rng.integers(0, 3, N).astype(np.int32)
    params = _MODEL.init(jax.random.key(0), x[:1])["params"]
    # 11 = 2·4 + 3: the last batch holds 3 rows, more than any tail batch (1, 2),
    # so it runs as a full batch with a padding row.
    idx = np.sort(rng.choice(N, 11, replace=False))
    key = jax.random.key(7)
    opt = optax.sgd(0.1)
    new_params, _, ref = reference_step(
        _apply,
        opt,
        params,
        opt.init(params),
        x,
        y,
        idx,
        clip_norm=C,
        noise_multiplier=SIGMA,
        denominator=D,
        noise_key=key,
        step=3,
    )
    return x, y, params, idx, key, new_params, ref


def _run(problem, mutation, fused_batches=None):
    x, y, params, idx, key, _, _ = problem
    cfg = DPSGDConfig(
        clip_norm=C, noise_multiplier=SIGMA, denominator=D, physical_batch_size=P, mutation=mutation
    )
    opt = optax.sgd(0.1)
    trainer = MaskedDPSGD(_apply, opt, cfg, donate=False, fused_batches=fused_batches)
    new_params, _, stats = trainer.step(params, opt.init(params), x, y, idx, key, 3)
    assert trainer.compilations == 1
    return new_params, stats


def _param_deviation(a, b, before):
    """max |a − b| over the parameters, relative to the size of the update b − before."""
    la = [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(a)]
    lb = [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(b)]
    l0 = [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(before)]
    dev = max(float(np.max(np.abs(u - v))) for u, v in zip(la, lb, strict=True))
    scale = max(float(np.max(np.abs(v - w))) for v, w in zip(lb, l0, strict=True))
    return dev / scale


@pytest.mark.parametrize("fused_batches", [None, 0])
def test_correct_trainer_matches_the_reference(problem, fused_batches):
    released, stats = _run(problem, None, fused_batches)
    assert compare_sketches(stats.update_sketch, problem[-1].update_sketch).ok
    assert _param_deviation(released, problem[-2], problem[2]) < 1e-5
    assert stats.num_clipped > 0  # the setting exercises clipping


@pytest.mark.parametrize("fused_batches", [None, 0])  # one dispatch, and k + 2 dispatches
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_every_mutation_releases_parameters_the_reference_does_not(
    problem, mutation, fused_batches
):
    released, stats = _run(problem, mutation, fused_batches)
    ref = problem[-1]
    assert _param_deviation(released, problem[-2], problem[2]) > 100 * 1e-5
    cmp = compare_sketches(stats.update_sketch, ref.update_sketch)
    if mutation == "noise_not_applied":
        assert cmp.ok  # the self-reported sketch looks right: it must never vouch alone
    else:
        assert not cmp.ok and cmp.max_rel_deviation > 100 * cmp.tolerance, cmp
    # What the naive implementation believes it did:
    assert stats.noise_std == pytest.approx(SIGMA * C)
    assert stats.noise_draws == 1 and stats.denominator == D
    assert stats.physical_batches == 3 and stats.batch_size == 11
    # What was measured:
    if mutation == "clip_after_sum":
        assert stats.max_clipped_norm == pytest.approx(stats.max_grad_norm)
        assert stats.max_clipped_norm > C
    elif mutation == "unmasked_padding":
        assert stats.num_clipped > ref.num_clipped  # 3 padding rows counted as examples
    elif mutation == "larger_clip_norm":
        assert stats.max_clipped_norm > C
    else:
        assert stats.num_clipped == ref.num_clipped
        assert stats.max_grad_norm == pytest.approx(ref.max_grad_norm, rel=1e-5)


def test_mutations_are_compositions_and_validation():
    import dataclasses

    assert mechanics_for(None) is PRODUCTION
    seen = set()
    for name in MUTATIONS:
        mech = mechanics_for(name)
        changed = tuple(
            f.name
            for f in dataclasses.fields(mech)
            if getattr(mech, f.name) is not getattr(PRODUCTION, f.name)
        )
        assert changed, name  # each mutation replaces at least one piece
        assert changed not in seen, name  # and no two mutations are the same bug
        seen.add(changed)
    assert check_mutation(None) is None
    with pytest.raises(InvalidArgument, match="mutation='nope'"):
        check_mutation("nope")
