"""The JAX segment replayer: honest runs reach their released checkpoints, mutated runs do not."""

from __future__ import annotations

import dataclasses
import shutil
import types

import pytest

from dpverify.ledger import read_ledger
from dpverify.replay import checkpoint_segments
from trainers.loop import TrainConfig, train
from trainers.prng import replay_setting
from trainers.replay import load_replay_context, replay_segments

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("trainers.test_replay")

# C != 1 so that the noise_std_sigma bug (σ instead of σ·C) changes the update.
BASE = dict(
    task="digits-mlp",
    expected_batch_size=24,
    noise_multiplier=1.0,
    clip_norm=0.5,
    steps=6,
    physical_batch_size=16,
    checkpoint_every=3,
    seed=7,
)


def _replay(run, **kw):
    ledger = read_ledger(run / "ledger")
    segments, _ = checkpoint_segments(ledger)
    return segments, replay_segments(run, ledger, segments, **kw)


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    out = tmp_path_factory.mktemp("replay") / "honest"
    train(TrainConfig(**BASE), out, progress=False)
    return out


def test_honest_run_reaches_every_released_checkpoint(honest):
    segments, result = _replay(honest)
    assert [(s.start, s.end) for s in segments] == [(0, 3), (3, 6)]
    assert result.skipped_reason is None
    for o in result.outcomes:
        assert o.ok and o.rel_deviation <= o.tolerance, o
        assert f"steps {o.start}–{o.end - 1}" in o.reason


def test_header_records_framework_and_pinned_prng(honest):
    extra = read_ledger(honest / "ledger").header.extra
    assert extra["framework"] == "jax"
    assert extra["prng"] == {"impl": "threefry2x32", "threefry_partitionable": True}


@pytest.mark.parametrize("mutation", ["noise_not_applied", "noise_reused_across_steps"])
def test_mutated_run_is_refuted_by_its_released_parameters(tmp_path, mutation):
    """The two bugs a self-reported sketch cannot show at a checkpointed step."""
    out = tmp_path / mutation
    train(TrainConfig(**BASE, mutation=mutation), out, progress=False)
    _, result = _replay(out)
    bad = [o for o in result.outcomes if not o.ok]
    assert bad and all(o.rel_deviation > 100 * o.tolerance for o in bad)
    words = {
        "noise_not_applied": "noise not applied to the update?",
        "noise_reused_across_steps": "noise reused across steps",
    }[mutation]
    assert any(o.diagnosis and words in o.diagnosis for o in bad), [o.diagnosis for o in bad]


def test_missing_or_wrong_noise_key_skips(honest, tmp_path):
    _, result = _replay(honest, noise_key_path=tmp_path / "absent.key")
    assert result.outcomes == () and "no noise key" in result.skipped_reason
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"\x01" * 32)
    _, result = _replay(honest, noise_key_path=wrong)
    assert "does not match" in result.skipped_reason


def test_missing_config_skips(honest, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(honest, copy)
    (copy / "config.json").unlink()
    assert "config.json" in _replay(copy)[1].skipped_reason


def test_unreproducible_prng_setting_skips_never_refutes(honest):
    ledger = read_ledger(honest / "ledger")
    for extra, words in [
        ({"framework": "jax"}, "does not record the PRNG setting"),
        ({"framework": "jax", "prng": {"impl": "rbg", "threefry_partitionable": True}}, "'rbg'"),
    ]:
        odd = types.SimpleNamespace(header=dataclasses.replace(ledger.header, extra=extra))
        ctx, why = load_replay_context(honest, odd)
        assert ctx is None and words in why and "could refute an honest run" in why
    assert replay_setting({"prng": {"impl": "threefry2x32", "threefry_partitionable": False}})[0]


def test_tampered_checkpoint_fails_that_segment(honest, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(honest, copy)
    path = copy / "checkpoints" / "step-00000003.msgpack"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    _, result = _replay(copy)
    assert not any(o.ok for o in result.outcomes)  # both segments touch checkpoint 3
    assert all("does not match its ledger digest" in o.reason for o in result.outcomes)


@pytest.mark.parametrize(
    ("task", "steps", "every"),
    [("digits-cnn", 3, 1), ("digits-mlp", 50, 25)],  # the CNN takes the k + 2 dispatch path on CPU
)
def test_honest_runs_replay_at_every_checkpoint_interval(tmp_path, task, steps, every):
    out = tmp_path / task
    config = dict(BASE, task=task, steps=steps, checkpoint_every=every, expected_batch_size=16)
    train(TrainConfig(**config), out, progress=False)
    segments, result = _replay(out)
    assert len(segments) == steps // every and segments[-1].final
    assert result.skipped_reason is None
    assert all(o.ok for o in result.outcomes), [o.reason for o in result.outcomes]
