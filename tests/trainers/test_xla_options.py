"""trainers.xla_options and MaskedDPSGD(compiler_options=...): the step's per-compilation
XLA options change the kernels, never the update; rejected options are clear errors."""

import jax
import numpy as np
import optax
import pytest

from dpverify.errors import InvalidArgument
from trainers import xla_options
from trainers.dpsgd import DPSGDConfig, MaskedDPSGD
from trainers.models import ViT
from trainers.xla_options import (
    GHOST_CPU_ACCUMULATE_OPTIONS,
    GHOST_CPU_OPTIONS,
    accumulate_options,
    step_options,
    supported,
)

_MODEL = ViT(num_classes=3, patch_size=2, width=8, depth=1, num_heads=2, mlp_dim=16)
N, P = 20, 4


def _apply(p, x):
    return _MODEL.apply({"params": p}, x)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, 4, 4, 1)).astype(np.float32)
    x[N - 1] = np.nan  # the padding row: never sampled, must change nothing
    y = rng.integers(0, 3, N).astype(np.int32)
    params = _MODEL.init(jax.random.key(1), x[:1])["params"]
    return x, y, params


def _trainer(clipping, **kwargs):
    cfg = DPSGDConfig(
        clip_norm=0.05, noise_multiplier=0.7, denominator=6.0, physical_batch_size=P,
        clipping=clipping,
    )  # fmt: skip
    return MaskedDPSGD(_apply, optax.sgd(0.1), cfg, donate=False, **kwargs)


def _run(trainer, problem, steps=3):
    x, y, params = problem
    opt_state = trainer.optimizer.init(params)
    key = jax.random.key(7)
    for t, L in enumerate([5, 2, 9][:steps]):
        idx = np.sort(np.random.default_rng(t).choice(N - 1, L, replace=False))
        params, opt_state, stats = trainer.step(
            params, opt_state, x, y, idx, key, t, pad_index=N - 1
        )
        assert stats.num_nonfinite == 0  # the NaN padding row was never counted
    return params


def test_step_options_by_method_and_backend():
    assert supported(GHOST_CPU_OPTIONS)  # this jaxlib has the option
    assert step_options("ghost", "cpu") == dict(GHOST_CPU_OPTIONS)
    assert step_options("vmap", "cpu") == {}
    assert step_options("ghost", "gpu") == {}
    assert step_options("ghost", "tpu") == {}
    assert supported({**GHOST_CPU_OPTIONS, **GHOST_CPU_ACCUMULATE_OPTIONS})
    both = {**GHOST_CPU_OPTIONS, **GHOST_CPU_ACCUMULATE_OPTIONS}
    assert accumulate_options("ghost", "cpu") == both
    assert accumulate_options("vmap", "cpu") == {}
    assert accumulate_options("ghost", "gpu") == {}


def test_an_option_this_xla_rejects_falls_back_to_the_defaults(monkeypatch):
    bogus = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH"}
    assert not supported(bogus)
    assert not supported({"xla_cpu_no_such_option": "1"})
    monkeypatch.setattr(xla_options, "GHOST_CPU_OPTIONS", bogus)
    assert step_options("ghost", "cpu") == {}
    assert accumulate_options("ghost", "cpu") == {}
    monkeypatch.undo()
    bad = {"xla_cpu_no_such_option": "1"}
    monkeypatch.setattr(xla_options, "GHOST_CPU_ACCUMULATE_OPTIONS", bad)
    assert accumulate_options("ghost", "cpu") == step_options("ghost", "cpu")  # the base alone


def test_ghost_trainer_compiles_with_the_options_and_updates_as_with_the_defaults(
    problem, monkeypatch
):
    if jax.default_backend() != "cpu":
        pytest.skip("the default options are XLA:CPU's")
    seen = []
    real_jit = jax.jit

    def spy(fun, *args, **kwargs):
        name = getattr(fun, "__name__", None) or getattr(getattr(fun, "func", None), "__name__", "")
        seen.append((name, kwargs.get("compiler_options")))  # (a partial: its function's name)
        return real_jit(fun, *args, **kwargs)

    monkeypatch.setattr(jax, "jit", spy)
    tuned = _trainer("ghost")
    _run(tuned, problem, steps=1)
    monkeypatch.setattr(jax, "jit", real_jit)
    # every step function is (re)wrapped with the options before its first call
    step_fns = {"_fused_impl", "_init_impl", "_accumulate_impl", "_accumulate_tail_impl",
                "_finalize_impl"}  # fmt: skip
    last = {name: opts for name, opts in seen if name in step_fns}
    batch_fns = {"_accumulate_impl", "_accumulate_tail_impl"}
    both = {**GHOST_CPU_OPTIONS, **GHOST_CPU_ACCUMULATE_OPTIONS}
    assert last == {
        name: both if name in batch_fns else dict(GHOST_CPU_OPTIONS) for name in step_fns
    }
    tuned = _trainer("ghost")
    plain = _trainer("ghost", compiler_options={})
    vmap = _trainer("vmap")
    out = {name: _run(t, problem) for name, t in (("tuned", tuned), ("plain", plain), ("vmap", vmap))}
    assert tuned.compiler_options == dict(GHOST_CPU_OPTIONS)
    assert tuned.accumulate_compiler_options == both
    assert plain.compiler_options == {} and vmap.compiler_options == {}
    assert plain.accumulate_compiler_options == {} == vmap.accumulate_compiler_options
    for t in (tuned, plain, vmap):
        assert t.compilations == 1
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(out["tuned"]))
    for name in ("plain", "vmap"):
        for a, b in zip(
            jax.tree_util.tree_leaves(out["tuned"]), jax.tree_util.tree_leaves(out[name]),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


def test_bad_compiler_options_are_one_line_errors(problem):
    with pytest.raises(InvalidArgument, match="compiler_options="):
        _trainer("ghost", compiler_options=["xla_cpu_use_xnnpack"])
    with pytest.raises(InvalidArgument, match="compiler_options="):
        _trainer("ghost", compiler_options={"xla_cpu_use_xnnpack": False})
    trainer = _trainer("vmap", compiler_options={"xla_cpu_no_such_option": "1"})
    with pytest.raises(InvalidArgument, match=r"xla_cpu_no_such_option.*not accepted") as err:
        _run(trainer, problem, steps=1)
    assert "\n" not in str(err.value)


def test_batch_functions_compile_without_tree_reductions_and_the_rest_with_them(problem):
    """The accumulate function's reductions are not split into windows (the option
    reached XLA); finalize, which sums the update sketch over every parameter,
    keeps XLA's tree reductions.  (Width 64: a LayerNorm reduces over > 32 elements.)"""
    if jax.default_backend() != "cpu":
        pytest.skip("the default options are XLA:CPU's")
    from trainers.prng import wrap_noise_key

    model = ViT(num_classes=3, patch_size=2, width=64, depth=1, num_heads=2, mlp_dim=16)
    x, y, _ = problem
    params = model.init(jax.random.key(1), x[:1])["params"]
    cfg = DPSGDConfig(clip_norm=0.05, noise_multiplier=0.7, denominator=6.0,
                      physical_batch_size=P, clipping="ghost")  # fmt: skip
    key, nk = jax.random.key(7), wrap_noise_key(jax.random.key(7))
    texts = {}
    for name, options in (("tuned", None), ("plain", {})):
        trainer = MaskedDPSGD(
            lambda p, xb: model.apply({"params": p}, xb), optax.sgd(0.1), cfg, donate=False,
            fused_batches=0, compiler_options=options,
        )  # fmt: skip
        opt_state = trainer.optimizer.init(params)
        trainer.step(params, opt_state, x, y, np.arange(2 * P), key, 0, pad_index=N - 1)
        carry = trainer._init(params)
        acc = trainer._accumulate.lower(
            carry, params, x, y, np.zeros(P, np.int32), np.ones(P, bool), nk, np.uint32(0),
            np.int32(0),
        )  # fmt: skip
        fin = trainer._finalize.lower(params, opt_state, carry, nk, np.uint32(0))
        texts[name] = (acc.compile().as_text(), fin.compile().as_text())
    assert "reduce-window" not in texts["tuned"][0]
    assert "reduce-window" in texts["plain"][0]  # so the assertion above can fail
    assert "reduce-window" in texts["tuned"][1]  # the sketch's sum over all parameters
