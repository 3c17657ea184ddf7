"""Training with canaries: slots in N, secret key in private.json, the step hook, audit."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from dpverify.empirical.canaries import canary_key_digest
from dpverify.errors import InvalidArgument
from dpverify.ledger import read_ledger
from trainers.loop import TrainConfig, train
from trainers.run_plan import plan_run

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("trainers.test_canaries")

M = 300
SMALL = dict(
    task="digits-mlp",
    expected_batch_size=40,
    noise_multiplier=1.0,
    clip_norm=1.0,
    steps=8,
    physical_batch_size=16,
    checkpoint_every=4,
    seed=7,
    optimizer="sgd",
    canaries=M,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("canary") / "r"
    summary = train(TrainConfig(**SMALL), out, progress=False)
    return out, summary


def test_ledger_counts_every_canary_slot_and_commits_to_the_key(run):
    out, summary = run
    ledger = read_ledger(out / "ledger")
    n0 = 1437  # digits training split
    assert ledger.header.dataset_size == n0 + M
    assert ledger.header.expected_batch_size == pytest.approx(40.0)
    assert ledger.header.extra["canaries"] == M
    private = json.loads((out / "private.json").read_text())
    key = bytes.fromhex(private["canaries"]["key"])
    assert ledger.header.extra["canary_key_digest"] == canary_key_digest(key)
    assert stat.S_IMODE(os.stat(out / "private.json").st_mode) == 0o600
    slots = np.concatenate([s.indices for s in ledger.steps])
    assert (slots >= n0).any() and slots.max() < n0 + M  # canaries are sampled like examples
    assert summary["canaries"] == M


def test_the_key_appears_in_no_other_file(run):
    out, _ = run
    key_hex = json.loads((out / "private.json").read_text())["canaries"]["key"]
    for path in Path(out).rglob("*"):
        if path.is_file() and path.name != "private.json":
            data = path.read_bytes()
            assert key_hex.encode() not in data and bytes.fromhex(key_hex) not in data, path


def test_audit_runs_the_empirical_check_and_replays_canary_steps(run):
    from audits import run_audit

    out, _ = run
    cert = run_audit(out, replay_steps=2)
    emp = cert.check("empirical")
    assert emp.status == "pass", emp.reason
    assert cert.to_json()["empirical"]["canaries"] == M
    rep = cert.check("replay")
    assert rep.status == "pass", rep.reason
    assert cert.verdict == "certified", cert.verdict_reason


def test_replay_needs_the_canary_key(run, tmp_path):
    import shutil

    from dpverify.ledger import read_ledger
    from dpverify.replay import checkpoint_segments
    from trainers.replay import replay_segments

    out, _ = run
    copy = tmp_path / "r"
    shutil.copytree(out, copy)
    private = json.loads((copy / "private.json").read_text())
    private["canaries"]["key"] = bytes(32).hex()  # not the committed key
    (copy / "private.json").write_text(json.dumps(private))
    ledger = read_ledger(copy / "ledger")
    report = replay_segments(copy, ledger, checkpoint_segments(ledger)[0])
    assert report.skipped_reason and "canary_key_digest" in report.skipped_reason


def test_step_hook_adds_the_canary_sum_before_noise_and_denominator():
    """σ = 0, SGD: the update with the extra sum differs by exactly −lr·extra/D."""
    import jax

    from trainers.components import init_model, make_optimizer
    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD
    from trainers.tasks import get_task

    data = get_task("digits-mlp").load_data(None)
    _, apply, params = init_model("digits-mlp", data.num_classes, data.x_train[:1], 0)
    opt = make_optimizer("sgd", 0.5)
    cfg = DPSGDConfig(clip_norm=1.0, noise_multiplier=0.0, denominator=20.0, physical_batch_size=8)
    trainer = MaskedDPSGD(apply, opt, cfg, donate=False)
    idx = np.arange(0, 30, 3)
    extra = jax.tree_util.tree_map(lambda a: np.full(a.shape, 0.01, np.float32), params)
    key = jax.random.PRNGKey(0)
    zero = jax.tree_util.tree_map(np.zeros_like, extra)
    p0, _, _ = trainer.step(params, opt.init(params), data.x_train, data.y_train, idx, key, 0,
                            extra_sum=zero)  # fmt: skip
    p1, _, _ = trainer.step(params, opt.init(params), data.x_train, data.y_train, idx, key, 0,
                            extra_sum=extra)  # fmt: skip
    diff = jax.tree_util.tree_map(lambda a, b: np.asarray(b) - np.asarray(a), p0, p1)
    for leaf in jax.tree_util.tree_leaves(diff):
        np.testing.assert_allclose(leaf, -0.5 * 0.01 / 20.0, rtol=1e-3, atol=1e-7)
    assert trainer.compilations == 1


def test_plan_counts_slots_and_refuses_more_canaries_than_parameters():
    plan = plan_run(TrainConfig(canaries=100, expected_batch_size=50), 1000, 5000)
    assert plan.dataset_size == 1100 and plan.canaries == 100
    assert plan.sampling_rate == pytest.approx(50 / 1100)
    with pytest.raises(InvalidArgument, match="canaries=6000"):
        plan_run(TrainConfig(canaries=6000), 1000, 5000)
    with pytest.raises(InvalidArgument, match="canaries=-1"):
        TrainConfig(canaries=-1)


def test_old_config_json_without_canaries_still_loads():
    from trainers.run_plan import RunPlan

    data = plan_run(TrainConfig(), 1000, 5000).to_json()
    del data["canaries"]
    assert RunPlan.from_json(data).canaries == 0


def test_reference_adds_the_canary_sum_like_the_masked_step():
    """Independent paths (TrainingCanaries vs reference_canaries + reference_step) agree."""
    import jax

    from dpverify.empirical.canaries import param_leaves
    from trainers.canaries import TrainingCanaries, design_from_private, reference_canaries
    from trainers.components import init_model, make_optimizer
    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD
    from trainers.noise_key import noise_prng_key
    from trainers.reference import reference_step
    from trainers.tasks import get_task

    data = get_task("digits-mlp").load_data(None)
    _, apply, params = init_model("digits-mlp", data.num_classes, data.x_train[:1], 0)
    n0, m = data.size, 50
    private = {"canaries": {"count": m, "key": bytes(range(32)).hex()}}
    host = jax.device_get(params)
    leaves = param_leaves(host)
    design = design_from_private(
        private["canaries"], num_params=sum(a.size for _, a in leaves), clip_norm=1.0
    )
    train_side = TrainingCanaries(
        design=design, real_size=n0, template=tuple((p, a.shape) for p, a in leaves)
    )
    split = reference_canaries(private, params, dataset_size=n0 + m, count=m, clip_norm=1.0)
    idx = np.concatenate([np.arange(0, 40, 4), n0 + np.flatnonzero(design.included)[:5]])
    real_a, slots = train_side.split(idx)
    real_b, extra_ref = split(idx)
    assert np.array_equal(real_a, real_b) and slots.size == 5

    opt = make_optimizer("sgd", 0.5)
    cfg = DPSGDConfig(clip_norm=1.0, noise_multiplier=0.5, denominator=20.0, physical_batch_size=8)
    key = bytes(32)
    masked, _, _ = MaskedDPSGD(apply, opt, cfg, donate=False).step(
        params, opt.init(params), data.x_train, data.y_train, real_a, noise_prng_key(key), 3,
        extra_sum=train_side.clipped_sum(slots),
    )  # fmt: skip
    ref, _, _ = reference_step(
        apply, opt, params, opt.init(params), data.x_train, data.y_train, real_b,
        clip_norm=1.0, noise_multiplier=0.5, denominator=20.0, noise_key=noise_prng_key(key),
        step=3, extra_sum=extra_ref,
    )  # fmt: skip
    for a, b in zip(jax.tree_util.tree_leaves(masked), jax.tree_util.tree_leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-6)
    without, _, _ = reference_step(
        apply, opt, params, opt.init(params), data.x_train, data.y_train, real_b,
        clip_norm=1.0, noise_multiplier=0.5, denominator=20.0, noise_key=noise_prng_key(key),
        step=3,
    )  # fmt: skip
    gap = max(
        float(np.max(np.abs(np.asarray(a) - b)))
        for a, b in zip(jax.tree_util.tree_leaves(masked), jax.tree_util.tree_leaves(without), strict=True)
    )
    assert gap > 1e-3  # the canaries matter: leaving them out would be seen
