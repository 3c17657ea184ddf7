"""Tests for ``MaskedDPSGD(streams=S)``: physical batches dealt to S devices
that accumulate concurrently, merged on the first, finalised once.

XLA fixes the number of host (CPU) devices when JAX initialises, so the
multi-device runs happen once, in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=3`` (this file run as a
script), which prints JSON; the tests here judge it.  The oracle is the same
trainer on one device: every step's parameters, statistics and sketch must
agree to float32 summation-order tolerance (observed ~1e-7), with NaN
padding rows, L from 0 to several batches (tail batch included), canary sums
started on the first device only, and both clipping methods.  Deterministic:
no statistical test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpverify.errors import InvalidArgument

pytestmark = pytest.mark.xdist_group("trainers.test_streams")

_N = 48
_BAD = 47  # poisoned with NaN; the padding rows point at it
_SEQ = [5, 0, 3, 8, 17, 1, 12, 4, 30]  # L per step at p = 4 (tail batch p_t = 2)


def _problem(name):
    import jax
    import optax

    from trainers.models import MLP, ViT

    rng = np.random.default_rng(0)
    if name == "mlp":
        x = rng.normal(size=(_N, 4)).astype(np.float32)
        model = MLP(num_classes=3, hidden=(5,))
    else:
        x = rng.normal(size=(_N, 4, 4, 1)).astype(np.float32)
        model = ViT(num_classes=3, patch_size=2, width=8, depth=1, num_heads=2, mlp_dim=12)
    x[_BAD] = np.nan
    y = rng.integers(0, 3, _N).astype(np.int32)
    params = model.init(jax.random.key(0), x[:1])["params"]
    return (
        x,
        y,
        params,
        (lambda p, xb: model.apply({"params": p}, xb)),
        optax.sgd(0.3, momentum=0.9),
    )


def _run(name, clipping, streams, extra, precompile=False):
    import jax

    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD

    x, y, params, apply, opt = _problem(name)
    cfg = DPSGDConfig(
        clip_norm=0.3,
        noise_multiplier=1.1,
        denominator=10.0,
        physical_batch_size=4,
        clipping=clipping,
    )
    trainer = MaskedDPSGD(apply, opt, cfg, streams=streams, fused_batches=0)
    state = opt.init(params)
    key = jax.random.key(7)
    bonus = jax.tree_util.tree_map(lambda a: np.full(a.shape, 0.01, np.float32), params)
    warmed = {}
    if precompile:  # every shape and device compiled first; the arguments must not change
        before = [np.asarray(a).copy() for a in jax.tree_util.tree_leaves((params, state))]
        trainer.precompile(params, state, x, y, extra_sum=bonus if extra else None)
        after = [np.asarray(a) for a in jax.tree_util.tree_leaves((params, state))]
        warmed = {
            "unchanged": all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)),
            "cache_after_precompile": trainer.cache_sizes(),
        }
    out = []
    for t, L in enumerate(_SEQ):
        idx = np.sort(np.random.default_rng(100 + t).choice(_BAD, L, replace=False))
        params, state, s = trainer.step(
            params, state, x, y, idx, key, t, pad_index=_BAD, extra_sum=bonus if extra else None
        )
        out.append(
            {
                "params": [
                    np.asarray(a, np.float64).ravel().tolist()
                    for a in jax.tree_util.tree_leaves(params)
                ],
                "devices": sorted(
                    d.id for a in jax.tree_util.tree_leaves(params) for d in a.devices()
                ),
                "stats": {
                    "batch_size": s.batch_size,
                    "num_clipped": s.num_clipped,
                    "num_nonfinite": s.num_nonfinite,
                    "physical_batches": s.physical_batches,
                    "noise_draws": s.noise_draws,
                    "max_grad_norm": s.max_grad_norm,
                    "max_clipped_norm": s.max_clipped_norm,
                    "sketch": list(s.update_sketch),
                },
            }
        )
    return {
        "steps": out,
        "compilations": trainer.compilations,
        "stream_count": trainer.stream_count,
        "clipping": trainer.clipping,
        "cache_after_steps": trainer.cache_sizes(),
        **warmed,
    }


def _script() -> None:
    results = {}
    for name, clipping, extra in (
        ("mlp", "vmap", False),
        ("mlp", "vmap", True),
        ("vit", "ghost", False),
    ):
        for streams in (None, 2, 3):
            results[f"{name}-{clipping}-{extra}-{streams}"] = _run(name, clipping, streams, extra)
    results["precompiled"] = _run("mlp", "vmap", 3, False, precompile=True)
    print(json.dumps(results))


@pytest.fixture(scope="module")
def runs(run_with_host_devices):
    return run_with_host_devices(__file__, 3, timeout=600)


@pytest.mark.parametrize("case", ["mlp-vmap-False", "mlp-vmap-True", "vit-ghost-False"])
def test_streamed_steps_equal_one_device(runs, case):
    one = runs[f"{case}-None"]
    assert one["stream_count"] == 1
    for streams in (2, 3):
        many = runs[f"{case}-{streams}"]
        assert many["stream_count"] == streams
        assert many["compilations"] == 1  # traced once, whatever L and S
        assert many["clipping"] == one["clipping"] == case.split("-")[1]
        for t, (a, b) in enumerate(zip(one["steps"], many["steps"], strict=True)):
            assert b["devices"] == [0] * len(b["devices"]), "parameters leave the first device"
            for k in ("batch_size", "num_clipped", "num_nonfinite", "physical_batches"):
                assert a["stats"][k] == b["stats"][k], (streams, t, k)
            assert b["stats"]["noise_draws"] == 1  # noise once per logical step
            for k in ("max_grad_norm", "max_clipped_norm"):
                assert b["stats"][k] == pytest.approx(a["stats"][k], rel=1e-5, abs=1e-6)
            np.testing.assert_allclose(
                b["stats"]["sketch"], a["stats"]["sketch"], rtol=1e-4, atol=1e-5
            )
            for pa, pb in zip(a["params"], b["params"], strict=True):
                assert np.all(np.isfinite(pb)), "NaN padding leaked into the update"
                np.testing.assert_allclose(pb, pa, rtol=1e-5, atol=1e-6)


def test_precompile_leaves_nothing_to_compile_mid_run_and_changes_nothing(runs):
    """After ``precompile`` (3 streams, tails of 1 and 2 rows), the steps of varied
    L compile nothing more, on any device; the arguments were not changed, so the
    steps equal those of the trainer that was not precompiled."""
    warm, plain = runs["precompiled"], runs["mlp-vmap-False-3"]
    assert warm["unchanged"] is True
    assert warm["cache_after_precompile"] == warm["cache_after_steps"]
    # One executable per device: an accumulator committed to its device at one
    # call and not at the next would compile again (it did, before init's carry
    # was committed).
    assert warm["cache_after_steps"]["accumulate_tail_1"] == 3
    assert warm["cache_after_steps"]["accumulate"] == 3
    assert max(warm["cache_after_steps"].values()) == 3
    assert warm["compilations"] == 1
    for a, b in zip(plain["steps"], warm["steps"], strict=True):
        for pa, pb in zip(a["params"], b["params"], strict=True):
            np.testing.assert_allclose(pb, pa, rtol=1e-6, atol=1e-7)


def test_the_canary_sum_is_added_once(runs):
    """extra_sum starts the first device's accumulator only: with it, the
    streamed run must differ from the run without it exactly as on one device."""
    for streams in ("None", "2", "3"):
        with_extra = runs[f"mlp-vmap-True-{streams}"]["steps"][0]["params"]
        without = runs[f"mlp-vmap-False-{streams}"]["steps"][0]["params"]
        shift = [np.asarray(a) - np.asarray(b) for a, b in zip(with_extra, without, strict=True)]
        if streams == "None":
            reference = shift
        else:
            for s, r in zip(shift, reference, strict=True):
                np.testing.assert_allclose(s, r, rtol=1e-4, atol=1e-7)


def test_streams_errors_are_one_line():
    import optax

    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD

    cfg = DPSGDConfig(clip_norm=1.0, noise_multiplier=1.0, denominator=4.0, physical_batch_size=2)

    def make(**kw):
        return MaskedDPSGD(lambda p, x: x, optax.sgd(0.1), cfg, **kw)

    assert make(streams=1).stream_count == 1
    assert make().stream_count == 1
    with pytest.raises(InvalidArgument, match=r"streams=0") as info:
        make(streams=0)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidArgument, match=r"fused_batches=3 must be 0 or None"):
        make(streams=2, fused_batches=3)
    with pytest.raises(InvalidArgument, match=r"streams=64 needs 64 local devices") as info:
        make(streams=64)
    assert "xla_force_host_platform_device_count=64" in str(info.value)


if __name__ == "__main__":
    _script()
