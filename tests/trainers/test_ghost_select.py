"""Tests for trainers.clipping.select and the ``clipping`` setting of a run:
validation, RunPlan backward compatibility, the CLI flag's one-line error."""

import subprocess
import sys

import pytest

from dpverify.errors import InvalidArgument
from trainers.clipping.select import CLIPPING_METHODS, check_clipping
from trainers.dpsgd import DPSGDConfig
from trainers.run_plan import RunPlan, TrainConfig


def test_methods_and_validation():
    assert CLIPPING_METHODS == ("vmap", "ghost", "auto")
    for name in CLIPPING_METHODS:
        assert check_clipping(name) == name
        assert (
            DPSGDConfig(
                clip_norm=1.0,
                noise_multiplier=1.0,
                denominator=2.0,
                physical_batch_size=1,
                clipping=name,
            ).clipping
            == name
        )
    assert (
        DPSGDConfig(
            clip_norm=1.0, noise_multiplier=1.0, denominator=2.0, physical_batch_size=1
        ).clipping
        == "auto"
    )
    for bad in ("Ghost", "", None, 3):
        with pytest.raises(InvalidArgument, match="clipping="):
            check_clipping(bad)
    with pytest.raises(InvalidArgument, match="clipping='fast'"):
        TrainConfig(clipping="fast")


def test_run_plan_without_clipping_field_still_loads():
    fields = {
        "task": "digits-mlp",
        "data_path": None,
        "dataset_size": 10,
        "sampling_rate": 0.5,
        "expected_batch_size": 5.0,
        "noise_multiplier": 1.0,
        "target_epsilon": None,
        "clip_norm": 1.0,
        "steps": 2,
        "delta": 1e-5,
        "physical_batch_size": 4,
        "precision": "float32",
        "declared_sampler": "poisson",
        "learning_rate": 0.1,
        "optimizer": "sgd",
        "checkpoint_every": 1,
    }
    assert RunPlan.from_json(fields).clipping == "auto"  # a config.json written before the field
    assert RunPlan.from_json({**fields, "clipping": "ghost"}).clipping == "ghost"
    with pytest.raises(InvalidArgument, match="lacks fields: task"):
        RunPlan.from_json({k: v for k, v in fields.items() if k != "task"})


def test_cli_rejects_unknown_clipping_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpverify",
            "train",
            "--task",
            "digits-mlp",
            "--steps",
            "1",
            "--clipping",
            "fast",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert "clipping='fast'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_sharded_runs_use_vmap_and_refuse_ghost():
    """Ghost's per-example pass is not placed per device: auto picks vmap on >1 device."""
    import jax
    import jax.numpy as jnp

    from trainers.clipping.select import resolve_clipping
    from trainers.dpsgd import trainable_leaves
    from trainers.losses import softmax_cross_entropy
    from trainers.models import MLP

    model = MLP(num_classes=10)
    x_one = jax.ShapeDtypeStruct((64,), jnp.float32)
    params = model.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
    kw = dict(
        model_apply=lambda p, x: model.apply({"params": p}, x),
        loss_fn=softmax_cross_entropy,
        trainable=trainable_leaves(params),
        precision="float32",
        params=params,
        x_one=x_one,
    )
    assert resolve_clipping("auto", **kw)[0] == "ghost"
    method, ghost, reason = resolve_clipping("auto", devices=2, **kw)
    assert method == "vmap" and ghost is None and "2 devices" in reason
    with pytest.raises(InvalidArgument, match="clipping='ghost' is not supported on 2 devices"):
        resolve_clipping("ghost", devices=2, **kw)
