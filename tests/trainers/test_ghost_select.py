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


def _auto(model, x_one, p, **extra):
    import jax
    import jax.numpy as jnp

    from trainers.clipping.select import resolve_clipping
    from trainers.dpsgd import trainable_leaves
    from trainers.losses import softmax_cross_entropy

    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *x_one.shape), x_one.dtype))
    return resolve_clipping(
        "auto",
        model_apply=lambda p_, x: model.apply({"params": p_}, x),
        loss_fn=softmax_cross_entropy,
        trainable=trainable_leaves(params["params"]),
        precision="float32",
        params=params["params"],
        x_one=x_one,
        physical_batch_size=p,
        **extra,
    )


def _narrow_cnn():
    """Three 3×3 convolutions of 4 channels on 32×32 inputs: 337 weights per
    example, while ghost holds every layer's 32×32×4 output gradient."""
    from trainers.models import CNN

    return CNN(num_classes=10, channels=(4, 4, 4), groups=2)


def test_auto_compares_whole_methods_on_the_four_models():
    """auto = the method whose compiled clipping step needs less working memory.

    Deterministic (XLA's buffer plan of fixed shapes).  A narrow CNN on large
    inputs is the case where ghost loses (the output gradients of its feature
    maps, which book-keeping keeps, outweigh 337 per-example gradient values),
    so auto must pick vmap there although every layer has a ghost rule; the
    MLP, the ViT and the text transformer (per-example embedding-table
    gradient V·D) go to ghost.  (The digits CNN is a near tie since the
    patches are cut by slicing and in chunks, 0.60 against 0.66 MB, so it is
    not pinned here.)
    """
    import jax
    import jax.numpy as jnp

    from trainers import tasks
    from trainers.clipping import cost

    expect = {
        "digits-mlp": (tasks._mlp(10), (64,), jnp.float32, "ghost"),
        "narrow-cnn": (_narrow_cnn(), (32, 32, 1), jnp.float32, "vmap"),
        "digits-vit": (tasks._digits_vit(10), (8, 8), jnp.float32, "ghost"),
        "text": (tasks._text_transformer(2), (32,), jnp.int32, "ghost"),
    }
    for name, (model, shape, dtype, want) in expect.items():
        method, ghost, reason = _auto(model, jax.ShapeDtypeStruct(shape, dtype), 16)
        assert method == want, (name, reason)
        assert (ghost is not None) == (want == "ghost")
        assert reason.startswith(f"auto chose {want}") and "working memory at p=16" in reason
        assert "\n" not in reason
    # the comparison is remembered per computation: asking again compiles nothing new
    size = len(cost._CACHE)
    model, shape, dtype, _ = expect["narrow-cnn"]
    assert _auto(model, jax.ShapeDtypeStruct(shape, dtype), 16)[0] == "vmap"
    assert len(cost._CACHE) == size


def test_trainer_records_the_auto_choice_once():
    import jax
    import numpy as np
    import optax

    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD

    model = _narrow_cnn()
    x = np.random.default_rng(0).uniform(size=(20, 32, 32, 1)).astype(np.float32)
    y = np.arange(20, dtype=np.int32) % 10
    params = model.init(jax.random.key(0), x[:1])["params"]
    cfg = DPSGDConfig(clip_norm=1.0, noise_multiplier=1.0, denominator=8.0, physical_batch_size=16)
    trainer = MaskedDPSGD(lambda p, xb: model.apply({"params": p}, xb), optax.sgd(0.1), cfg)
    assert trainer.resolve_clipping(params, x, y) == "vmap"
    assert "auto chose vmap" in trainer.clipping_reason and "ghost" in trainer.clipping_reason
    assert trainer.resolve_clipping(params, x, y) == "vmap"  # decided once
