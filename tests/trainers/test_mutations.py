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
from trainers.dpsgd import DPSGDConfig, MaskedDPSGD
from trainers.models import MLP
from trainers.mutations import MUTATIONS, check_mutation, mutation_flags
from trainers.reference import reference_noisy_gradient
from trainers.sketch import compare_sketches

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
    idx = np.sort(rng.choice(N, 9, replace=False))  # 9 = 2·4 + 1: padding present
    key = jax.random.key(7)
    ref = reference_noisy_gradient(
        _apply,
        params,
        x,
        y,
        idx,
        clip_norm=C,
        noise_multiplier=SIGMA,
        denominator=D,
        noise_key=key,
        step=3,
    )
    return x, y, params, idx, key, ref


def _run(problem, mutation):
    x, y, params, idx, key, _ = problem
    cfg = DPSGDConfig(
        clip_norm=C, noise_multiplier=SIGMA, denominator=D, physical_batch_size=P, mutation=mutation
    )
    opt = optax.sgd(0.1)
    trainer = MaskedDPSGD(_apply, opt, cfg, donate=False)
    _, _, stats = trainer.step(params, opt.init(params), x, y, idx, key, 3)
    assert trainer.compilations == 1
    return stats


def test_correct_trainer_matches_the_reference(problem):
    stats = _run(problem, None)
    assert compare_sketches(stats.update_sketch, problem[-1].update_sketch).ok
    assert stats.num_clipped > 0  # the setting exercises clipping


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_every_mutation_is_caught_by_replay(problem, mutation):
    stats = _run(problem, mutation)
    ref = problem[-1]
    cmp = compare_sketches(stats.update_sketch, ref.update_sketch)
    assert not cmp.ok and cmp.max_rel_deviation > 100 * cmp.tolerance, cmp
    # What the naive implementation believes it did:
    assert stats.noise_std == pytest.approx(SIGMA * C)
    assert stats.noise_draws == 1 and stats.denominator == D
    assert stats.physical_batches == 3 and stats.batch_size == 9
    # What was measured:
    if mutation == "clip_after_sum":
        assert stats.max_clipped_norm == pytest.approx(stats.max_grad_norm)
        assert stats.max_clipped_norm > C
    elif mutation == "unmasked_padding":
        assert stats.num_clipped > ref.num_clipped  # 3 padding rows counted as examples
    else:
        assert stats.num_clipped == ref.num_clipped
        assert stats.max_grad_norm == pytest.approx(ref.max_grad_norm, rel=1e-5)


def test_flags_and_validation():
    assert not mutation_flags(None).any
    for name in MUTATIONS:
        flags = mutation_flags(name)
        assert flags.any and sum(map(bool, vars(flags).values())) == 1
    assert check_mutation(None) is None
    with pytest.raises(InvalidArgument, match="mutation='nope'"):
        check_mutation("nope")
