"""Tests for trainers.sharding and the data-parallel masked DP-SGD step.

XLA fixes the number of host (CPU) devices when JAX initialises, so the
multi-device checks run once, in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this file run as a
script); it prints JSON measurements and the tests here judge them.  The
checks are deterministic (fixed seeds, no statistical test): no false
positives beyond float32 rounding, which the tolerances cover with margin
(observed deviations ~1e-7).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpverify.errors import InvalidArgument

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("trainers.test_sharding")

_DEVICES = 8
_P = 8  # physical batch size: 1 row per device
_N = 64
_BAD = 63  # a data set row poisoned with NaN and used as the padding index
_SEQ = [0, 3, 8, 9, 37, 1, 16, 0, 25, 7, 40, 12]  # L for 12 steps: 0 … 5p, < p, = p, > p


def _problem():
    import jax
    import optax

    from trainers.models import MLP

    rng = np.random.default_rng(0)
    x = rng.normal(size=(_N, 4)).astype(np.float32)
    x[_BAD] = np.nan
    y = rng.integers(0, 3, _N).astype(np.int32)
    model = MLP(num_classes=3, hidden=(5,))
    params = model.init(jax.random.key(0), x[:1])["params"]
    return (
        x,
        y,
        params,
        (lambda p, xb: model.apply({"params": p}, xb)),
        optax.sgd(0.3, momentum=0.9),
    )  # linear in the gradient: scale errors show


def _indices(L, t):
    # Never the poisoned row; the padding rows point at it.
    return np.sort(np.random.default_rng(100 + t).choice(_BAD, L, replace=False))


def _leaves(tree):
    import jax

    return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(tree)]


def _run(devices, *, donate=True, fused_batches=None):
    import jax
    import jax.numpy as jnp

    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD

    x, y, params, apply, opt = _problem()
    cfg = DPSGDConfig(clip_norm=0.3, noise_multiplier=1.1, denominator=10.0, physical_batch_size=_P)
    trainer = MaskedDPSGD(
        apply, opt, cfg, devices=devices, donate=donate, fused_batches=fused_batches
    )
    params = jax.tree_util.tree_map(jnp.array, params)
    state = opt.init(params)
    key = jax.random.key(7)
    history = []
    for t, L in enumerate(_SEQ):
        params, state, s = trainer.step(params, state, x, y, _indices(L, t), key, t, pad_index=_BAD)
        history.append({"params": _leaves(params), "stats": s})
    return trainer, params, history


def _worker() -> dict:
    """Runs under 8 host devices: single-device vs sharded, step by step."""
    import re

    import jax

    from dpverify.errors import InvalidArgument as Invalid
    from trainers.batching import split_physical_batches
    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD
    from trainers.reference import reference_step

    assert len(jax.devices()) == _DEVICES, jax.devices()
    _, _, single = _run(None)
    # K = 2: L > 2p = 16 overflows to the k + 2 dispatch path, the rest is fused.
    sharded_trainer, sharded_params, sharded = _run(_DEVICES, fused_batches=2)
    _, _, four = _run(4, donate=False)  # 2 rows per device
    steps = []
    for t, (a, b, c) in enumerate(zip(single, sharded, four, strict=True)):
        sa, sb, sc = a["stats"], b["stats"], c["stats"]
        scale = max(float(np.sqrt(np.mean(np.square(sa.update_sketch)))), 1e-12)
        steps.append(
            {
                "L": _SEQ[t],
                "param_dev": max(
                    float(np.max(np.abs(u - v)))
                    for u, v in zip(a["params"], b["params"], strict=True)
                ),
                "param_dev_4": max(
                    float(np.max(np.abs(u - v)))
                    for u, v in zip(a["params"], c["params"], strict=True)
                ),
                "params_finite": all(bool(np.isfinite(v).all()) for v in b["params"]),
                "sketch_rel_dev": float(
                    np.max(np.abs(np.subtract(sa.update_sketch, sb.update_sketch))) / scale
                ),
                "single": _stats_json(sa),
                "sharded": _stats_json(sb),
                "four": _stats_json(sc),
            }
        )
    # The sharded step against the float64 reference (one step, L > 2p, NaN padding).
    x, y, params, apply, opt = _problem()
    idx = _indices(21, 0)
    key = jax.random.key(7)
    ref_params, _, _ = reference_step(
        apply,
        opt,
        params,
        opt.init(params),
        x,
        y,
        idx,
        clip_norm=0.3,
        noise_multiplier=1.1,
        denominator=10.0,
        noise_key=key,
        step=0,
    )
    cfg = DPSGDConfig(clip_norm=0.3, noise_multiplier=1.1, denominator=10.0, physical_batch_size=_P)
    new_params, _, _ = MaskedDPSGD(apply, opt, cfg, devices=_DEVICES, donate=False).step(
        params, opt.init(params), x, y, idx, key, 0, pad_index=_BAD
    )
    ref_dev = max(
        float(np.max(np.abs(u - v)))
        for u, v in zip(_leaves(new_params), _leaves(ref_params), strict=True)
    )
    tr = sharded_trainer
    counts = {"trace_counts": dict(tr.trace_counts), "cache_sizes": tr.cache_sizes()}
    # The compiled accumulate step: per-device rows and one all-reduce, no all-gather
    # (lowering again retraces, so the counts are taken first).
    b = split_physical_batches(np.arange(10), _P)
    hlo = (
        tr._accumulate.lower(
            tr._init(sharded_params, None),
            sharded_params,
            tr._data[2],
            tr._data[3],
            b.indices[0],
            b.mask[0],
            key,
            np.uint32(0),
            np.int32(0),
        )
        .compile()
        .as_text()
    )
    fused_hlo = (
        tr._fused.lower(
            sharded_params,
            tr.optimizer.init(sharded_params),
            tr._data[2],
            tr._data[3],
            np.zeros((2, _P), np.int32),
            np.zeros((2, _P), bool),
            np.int32(1),
            key,
            np.uint32(0),
            None,
        )
        .compile()
        .as_text()
    )
    try:
        MaskedDPSGD(apply, opt, DPSGDConfig(**{**_cfg_kw(), "physical_batch_size": 12}), devices=8)
        divisible_error = None
    except Invalid as exc:
        divisible_error = str(exc)
    leaf = jax.tree_util.tree_leaves(sharded_params)[0]
    return {
        "cnn": _cnn_deviation(),
        "steps": steps,
        "reference_param_dev": ref_dev,
        **counts,
        "device_count": tr.device_count,
        "params_replicated": bool(leaf.sharding.is_fully_replicated)
        and len(leaf.sharding.device_set) == _DEVICES,
        "all_reduce": "all-reduce(" in hlo,
        "all_gather": "all-gather(" in hlo,
        "fused_all_reduce": "all-reduce(" in fused_hlo,
        "fused_all_gather": "all-gather(" in fused_hlo,
        "fused_per_device_input_rows": sorted(set(re.findall(r"f32\[(\d+),4\]", fused_hlo))),
        "per_device_input_rows": sorted(set(re.findall(r"f32\[(\d+),4\]", hlo))),
        "divisible_error": divisible_error,
    }


def _cnn_deviation():
    """A convolutional model: 2 devices against 1, both dispatch paths (σ = 0: only the
    per-example gradients and their clipped sum differ if the rows get mixed)."""
    import jax
    import optax

    from trainers.components import init_model
    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD
    from trainers.session import load_dataset

    ds = load_dataset("digits-cnn", None)
    _, apply, params = init_model("digits-cnn", ds.num_classes, ds.x_train[:1], 3)
    opt = optax.sgd(0.1)
    cfg = DPSGDConfig(clip_norm=0.5, noise_multiplier=0.0, denominator=40.0, physical_batch_size=16)
    idx = np.sort(np.random.default_rng(0).choice(len(ds.x_train), 37, replace=False))
    out = {}
    for fused in (0, None):
        results = []
        for devices in (None, 2):
            tr = MaskedDPSGD(apply, opt, cfg, donate=False, devices=devices, fused_batches=fused)
            new, _, stats = tr.step(
                params, opt.init(params), ds.x_train, ds.y_train, idx, jax.random.key(1), 0
            )
            results.append((_leaves(new), stats.max_grad_norm))
        (a, na), (b, nb) = results
        out[str(fused)] = {
            "param_dev": max(float(np.max(np.abs(u - v))) for u, v in zip(a, b, strict=True)),
            "max_grad_norm": [na, nb],
        }
    return out


def _cfg_kw():
    return {"clip_norm": 0.3, "noise_multiplier": 1.1, "denominator": 10.0}


def _stats_json(s):
    return {
        "batch_size": s.batch_size,
        "num_clipped": s.num_clipped,
        "max_grad_norm": s.max_grad_norm,
        "max_clipped_norm": s.max_clipped_norm,
        "physical_batches": s.physical_batches,
        "noise_draws": s.noise_draws,
        "loss": None if np.isnan(s.loss) else s.loss,
    }


@pytest.fixture(scope="module")
def multi(run_with_host_devices):
    return run_with_host_devices(__file__, _DEVICES, timeout=300)


def test_sharded_step_equals_single_device_step(multi):
    seen = set()
    for s in multi["steps"]:
        assert s["param_dev"] < 1e-5, s
        assert s["param_dev_4"] < 1e-5, s
        assert s["params_finite"], s  # NaN padding contributed exactly nothing
        assert s["sketch_rel_dev"] < 1e-5, s
        for other in ("sharded", "four"):
            a, b = s["single"], s[other]
            for k in ("batch_size", "num_clipped", "physical_batches", "noise_draws"):
                assert a[k] == b[k], (k, s)
            for k in ("max_grad_norm", "max_clipped_norm"):
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (k, s)
            if a["loss"] is None:
                assert b["loss"] is None
            else:
                assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        seen.add(s["single"]["physical_batches"])
        assert s["single"]["batch_size"] == s["L"]
    assert {0, 1, 2, 5} <= seen  # L = 0, L < p, L just above p, L = 37 > 4p
    assert any(s["single"]["num_clipped"] for s in multi["steps"])  # clipping exercised


def test_sharded_convolutional_model_equals_single_device(multi):
    """Per-example gradients of a CNN stay per example when its rows are sharded (they did
    not when vmap(grad) of the convolution was left to the SPMD partitioner)."""
    for path, r in multi["cnn"].items():
        assert r["param_dev"] < 1e-6, (path, r)
        assert r["max_grad_norm"][1] == pytest.approx(r["max_grad_norm"][0], rel=1e-6), (path, r)


def test_sharded_step_matches_float64_reference(multi):
    assert multi["reference_param_dev"] < 1e-5


def test_compiles_once_across_varied_batch_sizes(multi):
    assert len(_SEQ) >= 10
    # Both the one-dispatch path and the overflow path (L > K·p) ran, each compiled once.
    one = {"fused": 1, "init": 1, "accumulate": 1, "finalize": 1}  # no tail batches when sharded
    assert multi["trace_counts"] == one and multi["cache_sizes"] == one


def test_work_is_split_across_devices(multi):
    assert multi["device_count"] == _DEVICES
    assert multi["params_replicated"]
    assert multi["all_reduce"] and not multi["all_gather"]
    assert multi["fused_all_reduce"] and not multi["fused_all_gather"]
    # Each device gathers p/n = 1 input row (the replicated data set is (64, 4)).
    assert "1" in multi["per_device_input_rows"]
    assert str(_P) not in multi["per_device_input_rows"]
    assert "1" in multi["fused_per_device_input_rows"]
    assert str(_P) not in multi["fused_per_device_input_rows"]


def test_indivisible_physical_batch_is_one_line_error(multi):
    msg = multi["divisible_error"]
    assert msg == "physical_batch_size=12 must be divisible by the device count 8"


# -- single-process checks (one device) ------------------------------------------


def test_divisibility_checked_before_devices_are_looked_up():
    from trainers.sharding import data_parallel

    with pytest.raises(
        InvalidArgument, match=r"^physical_batch_size=8 must be divisible by the device count 3$"
    ):
        data_parallel(3, physical_batch_size=8)


def test_too_many_devices_and_bad_lists_are_errors():
    import jax

    from trainers.sharding import check_divisible, data_parallel, resolve_devices

    n = len(jax.devices())
    with pytest.raises(InvalidArgument, match=rf"^devices={n + 1} exceeds the {n} available"):
        data_parallel(n + 1)
    with pytest.raises(InvalidArgument, match="devices=0"):
        data_parallel(0)
    with pytest.raises(InvalidArgument, match="at least one"):
        resolve_devices([])
    with pytest.raises(InvalidArgument, match="distinct"):
        resolve_devices([jax.devices()[0]] * 2)
    assert check_divisible(8, 4) == 8


def test_one_device_means_no_mesh():
    import jax

    from trainers.sharding import data_parallel

    assert data_parallel(None) is None
    assert data_parallel(1, physical_batch_size=7) is None
    dp = data_parallel([jax.devices()[0]], physical_batch_size=7)
    assert dp.count == 1
    assert dp.describe() == {"devices": 1, "platform": jax.devices()[0].platform}


def test_one_device_mesh_equals_plain_step():
    import jax

    plain_trainer, _, plain = _run(None)
    mesh_trainer, _, mesh = _run([jax.devices()[0]])
    assert plain_trainer.device_count == mesh_trainer.device_count == 1
    assert mesh_trainer.placement is not None and plain_trainer.placement is None
    for a, b in zip(plain, mesh, strict=True):
        for u, v in zip(a["params"], b["params"], strict=True):
            np.testing.assert_allclose(u, v, rtol=0, atol=1e-6)
        assert a["stats"].num_clipped == b["stats"].num_clipped
    assert mesh_trainer.compilations == 1


# -- dpverify train --devices -------------------------------------------------------

_SMALL = [
    "--expected-batch-size", "24", "--noise-multiplier", "1.0", "--steps", "4",
    "--physical-batch-size", "16", "--checkpoint-every", "2", "--seed", "3", "--quiet",
]  # fmt: skip


def _cli(argv):
    from dpverify.cli import main

    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors
        return exc.code


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("3", "physical_batch_size=16 must be divisible by the device count 3"),
        ("0", "devices=0"),
        ("many", "'many' is not an integer"),
        ("too_many", "exceeds the"),
    ],
)
def test_train_devices_errors_are_one_line_exit_2(tmp_path, capsys, devices, message):
    import jax

    if devices == "too_many":
        devices = str(16 * len(jax.devices()))  # divides p = 16 only when 1 device exists
        if len(jax.devices()) != 1:
            pytest.skip("needs a single-device process")
    rc = _cli(["train", "--out", str(tmp_path / "r"), *_SMALL, "--devices", devices])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_train_cli_on_8_devices_records_the_count(tmp_path):
    from dpverify.ledger import read_ledger

    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={_DEVICES}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    code = "import sys; from dpverify.cli import main; sys.exit(main(sys.argv[1:]))"
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *_SMALL, "--devices", "8", "--json"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["devices"] == _DEVICES
    assert summary["compilations"] == 1
    assert summary["steps_executed"] == 4
    assert read_ledger(out / "ledger").header.extra["devices"] == _DEVICES


if __name__ == "__main__":
    print(json.dumps(_worker()))
