"""Replay through the float64 reference: honest runs match, mutated runs are flagged."""

from __future__ import annotations

import shutil

import pytest

from dpverify.errors import InvalidArgument, UnusableInput
from trainers.loop import TrainConfig, train
from trainers.replay import replay_steps, replayable_steps

# C != 1 so that the noise_std_sigma bug (σ instead of σ·C) changes the update.
BASE = dict(
    task="digits-mlp",
    expected_batch_size=24,
    noise_multiplier=1.0,
    clip_norm=0.5,
    steps=4,
    physical_batch_size=16,
    checkpoint_every=1,
    seed=7,
)


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    out = tmp_path_factory.mktemp("replay") / "honest"
    train(TrainConfig(**BASE), out, progress=False)
    return out


def test_replayable_steps_have_a_checkpoint_before_them(honest):
    assert replayable_steps(honest) == (0, 1, 2, 3)
    assert replayable_steps(honest / "ledger") == (0, 1, 2, 3)


def test_honest_run_matches_the_reference(honest):
    report = replay_steps(honest, sample=10, seed=0)
    assert report.skipped_reason is None and report.ok
    assert [o.step for o in report.outcomes] == [0, 1, 2, 3]
    for o in report.outcomes:
        assert o.ok and o.max_rel_deviation <= o.tolerance
        assert f"step {o.step}" in o.reason
    assert report.to_dict()["ok"] is True


def test_sample_and_explicit_steps(honest):
    assert len(replay_steps(honest, sample=2, seed=1).outcomes) == 2
    assert [o.step for o in replay_steps(honest, steps=[2]).outcomes] == [2]
    with pytest.raises(InvalidArgument, match="cannot be replayed"):
        replay_steps(honest, steps=[99])
    with pytest.raises(UnusableInput, match="not a run directory"):
        replay_steps(honest / "checkpoints")


@pytest.mark.parametrize("mutation", ["noise_std_sigma", "wrong_denominator"])
def test_mutated_run_is_flagged(tmp_path, mutation):
    out = tmp_path / mutation
    train(TrainConfig(**BASE, mutation=mutation), out, progress=False)
    report = replay_steps(out, sample=2, seed=0)
    assert report.skipped_reason is None and not report.ok
    bad = report.failures
    assert bad, "a mutated trainer must not match the reference"
    for o in bad:
        assert o.max_rel_deviation > o.tolerance
        assert f"step {o.step}" in o.reason and "differs" in o.reason


def test_missing_or_wrong_noise_key_skips(honest, tmp_path):
    report = replay_steps(honest, noise_key_path=tmp_path / "absent.key")
    assert report.outcomes == () and "no noise key" in report.skipped_reason
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"\x01" * 32)
    report = replay_steps(honest, noise_key_path=wrong)
    assert "does not match" in report.skipped_reason and not report.ok


def test_missing_config_or_checkpoints_skip(honest, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(honest, copy)
    (copy / "config.json").unlink()
    assert "config.json" in replay_steps(copy).skipped_reason
    shutil.rmtree(copy / "checkpoints")
    assert "no checkpoint" in replay_steps(copy).skipped_reason


def test_tampered_checkpoint_fails_that_step(honest, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(honest, copy)
    path = copy / "checkpoints" / "step-00000002.msgpack"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    (outcome,) = replay_steps(copy, steps=[2]).outcomes
    assert not outcome.ok and "does not match its ledger digest" in outcome.reason
