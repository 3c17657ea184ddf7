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


def test_audit_runs_the_empirical_check_and_replay_says_why_it_skips(run):
    from audits import run_audit

    out, _ = run
    cert = run_audit(out, replay_steps=1)
    emp = cert.check("empirical")
    assert emp.status == "pass", emp.reason
    assert cert.to_json()["empirical"]["canaries"] == M
    rep = cert.check("replay")
    assert rep.status == "skip" and "canaries" in rep.reason


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
