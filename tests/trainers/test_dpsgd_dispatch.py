"""Tests for trainers.dpsgd's dispatch paths: the one-dispatch fused step (fixed
(K, p) buffer, dynamic trip count) against the k + 2 dispatch fallback and the
float64 reference, the overflow L > K·p, and compile counts over varied L."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from trainers.dpsgd import DPSGDConfig, MaskedDPSGD, default_fused_batches
from trainers.models import MLP
from trainers.mutations import MUTATIONS
from trainers.reference import reference_step
from trainers.sketch import compare_sketches

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("trainers.test_dpsgd_dispatch")

N, P, C, SIGMA, D = 48, 4, 0.4, 1.1, 6.0
_BAD = N - 1  # poisoned with NaN, used as the padding index, never sampled
_MODEL = MLP(num_classes=3, hidden=(5,))


def _apply(p, x):
    return _MODEL.apply({"params": p}, x)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    x[_BAD] = np.nan
    y = rng.integers(0, 3, N).astype(np.int32)
    params = _MODEL.init(jax.random.key(0), x[:1])["params"]
    return x, y, params


def _trainer(fused_batches, mutation=None, tail_batch_size=None):
    cfg = DPSGDConfig(
        clip_norm=C, noise_multiplier=SIGMA, denominator=D, physical_batch_size=P, mutation=mutation
    )
    return MaskedDPSGD(
        _apply,
        optax.adam(0.05),
        cfg,
        donate=False,
        fused_batches=fused_batches,
        tail_batch_size=tail_batch_size,
    )


def _tail_traces(counts):
    """Traces of the tail batch functions, whatever their sizes."""
    return sum(v for k, v in counts.items() if k.startswith("accumulate_tail_"))


def _indices(L, seed):
    return np.sort(np.random.default_rng(seed).choice(_BAD, L, replace=False))


def _leaves(tree):
    return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(tree)]


def _max_dev(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(_leaves(a), _leaves(b), strict=True))


# L = 0; L < p; L in the fused range of K = 2 (k = 2); L > K·p = 8 (k = 6, overflow);
# with the default tail batches of p_t = 1 and 2 rows: L = 2 (the 2-row tail alone),
# 6 (one full batch + the 2-row tail), 21 (overflow + the 1-row tail).
@pytest.mark.parametrize("L", [0, 2, 3, 6, 7, 21, 23])
def test_fused_equals_fallback_equals_reference_with_nan_padding(problem, L):
    x, y, params = problem
    idx = _indices(L, L)
    key = jax.random.key(5)
    opt = optax.adam(0.05)
    runs = {}
    tailed = L % P in (1, 2)  # the last batch has r ≤ 2 real rows: a tail batch of r rows
    variants = [("fused", 2, None), ("fallback", 0, None), ("default", None, None)]
    if tailed:  # the same trainers without the tail batch
        variants += [("fused_no_tail", 2, 0), ("fallback_no_tail", 0, 0)]
    for name, K, tail in variants:
        tr = _trainer(K, tail_batch_size=tail)
        new, _, s = tr.step(params, opt.init(params), x, y, idx, key, 11, pad_index=_BAD)
        runs[name] = (new, s, dict(tr.trace_counts))
    overflow = L > 2 * P
    assert runs["fused"][2]["fused"] == (0 if overflow else 1)
    assert runs["fused"][2]["accumulate"] == (1 if overflow else 0)
    assert _tail_traces(runs["fused"][2]) == (1 if overflow and tailed else 0)
    assert runs["fallback"][2]["fused"] == 0 and runs["fallback"][2]["finalize"] == 1
    assert _tail_traces(runs["fallback"][2]) == (1 if tailed else 0)
    if tailed:  # the tail of exactly r rows
        assert runs["fallback"][2][f"accumulate_tail_{L % P}"] == 1
        assert _tail_traces(runs["fallback_no_tail"][2]) == 0
    assert runs["fallback"][2]["accumulate"] == (0 if L <= 2 else 1)
    assert runs["default"][2] == {
        "fused": 1,
        "init": 0,
        "accumulate": 0,
        "accumulate_tail_1": 0,
        "accumulate_tail_2": 0,
        "finalize": 0,
    }
    ref_p, _, ref = reference_step(
        _apply,
        opt,
        params,
        opt.init(params),
        x,
        y,
        idx,
        clip_norm=C,
        noise_multiplier=SIGMA,
        denominator=D,
        noise_key=key,
        step=11,
    )
    base_p, base, _ = runs["fallback"]
    for new, s, _ in runs.values():
        assert all(np.isfinite(v).all() for v in _leaves(new))  # NaN padding added nothing
        assert _max_dev(new, base_p) < 1e-6
        assert _max_dev(new, ref_p) < 1e-5
        assert compare_sketches(s.update_sketch, ref.update_sketch).ok
        assert (s.batch_size, s.physical_batches, s.num_clipped) == (
            base.batch_size,
            base.physical_batches,
            base.num_clipped,
        )
        assert s.num_clipped == ref.num_clipped and s.physical_batches == -(-L // P)
        assert s.max_grad_norm == pytest.approx(base.max_grad_norm, rel=1e-6, abs=1e-7)
        assert s.max_clipped_norm == pytest.approx(base.max_clipped_norm, rel=1e-6, abs=1e-7)
        assert np.allclose(s.update_sketch, base.update_sketch, rtol=1e-5, atol=1e-6)
        assert (np.isnan(s.loss) and np.isnan(base.loss)) or s.loss == pytest.approx(
            base.loss, rel=1e-6
        )
    if L:
        assert ref.num_clipped > 0  # clipping exercised


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_mutations_behave_the_same_on_both_paths(problem, mutation):
    # E.g. noise_per_physical_batch draws once per EXECUTED physical batch only:
    # the fused loop never touches the K - k unused buffer rows.
    x, y, _ = problem
    x = np.nan_to_num(x)  # unmasked_padding would otherwise turn NaN
    params = _MODEL.init(jax.random.key(1), x[:1])["params"]
    idx = _indices(11, 1)  # k = 3; the last batch (3 rows: no tail holds it) is padded
    key = jax.random.key(3)
    opt = optax.adam(0.05)
    out = []
    for K in (8, 0):
        new, _, s = _trainer(K, mutation).step(params, opt.init(params), x, y, idx, key, 2)
        out.append((new, s))
    (a, sa), (b, sb) = out
    assert _max_dev(a, b) < 1e-6
    assert np.allclose(sa.update_sketch, sb.update_sketch, rtol=1e-5, atol=1e-6)
    assert sa == sb or (sa.num_clipped, sa.physical_batches) == (
        sb.num_clipped,
        sb.physical_batches,
    )


def test_compilations_do_not_grow_with_distinct_k_including_overflow(problem):
    x, y, params = problem
    tr = MaskedDPSGD(
        _apply,
        optax.adam(0.05),
        DPSGDConfig(clip_norm=C, noise_multiplier=SIGMA, denominator=D, physical_batch_size=P),
        fused_batches=2,
    )
    state = tr.optimizer.init(params)
    params = jax.tree_util.tree_map(jnp.array, params)
    key = jax.random.key(0)
    lengths = [0, 1, 4, 5, 8, 9, 13, 17, 21, 25, 29, 33, 37, 41, 46, 2, 7, 3, 0, 12, 30, 6]
    seen = set()
    for t, L in enumerate(lengths):
        params, state, s = tr.step(params, state, x, y, _indices(L, t), key, t, pad_index=_BAD)
        seen.add(s.physical_batches)
        assert tr.compilations == 1, (t, tr.trace_counts)
    assert len(lengths) >= 20 and len(seen) >= 12 and max(seen) > 2  # overflow exercised
    one = {"fused": 1, "init": 1, "accumulate": 1, "finalize": 1}
    one |= {"accumulate_tail_1": 1, "accumulate_tail_2": 1}
    assert tr.trace_counts == one and tr.cache_sizes() == one
    assert all(np.isfinite(v).all() for v in _leaves(params))


@pytest.mark.parametrize("K", [3, 0])  # the fused path and the k + 2 path
def test_tail_batch_runs_exactly_when_the_last_batch_fits_it(problem, K):
    # The tail batches must be a pure efficiency change: every L gives the same
    # update as the trainer without them, and the last batch runs as the smallest
    # p_t >= r = L - p(k-1), or as a full batch when none is that large.
    x, y, params = problem
    opt = optax.adam(0.05)
    key = jax.random.key(2)
    with_tail = _trainer(K, tail_batch_size=(1, 3))
    without = _trainer(K, tail_batch_size=0)
    calls = []
    if K:
        orig = with_tail._fused

        def spy(*args):
            calls.append([int(count) for _, _, count in args[-1]])  # tail counts, by size
            return orig(*args)

        with_tail._fused = spy
    for L in range(0, 13):
        idx = _indices(L, 100 + L)
        before = dict(with_tail.trace_counts)
        a, _, sa = with_tail.step(params, opt.init(params), x, y, idx, key, L, pad_index=_BAD)
        b, _, sb = without.step(params, opt.init(params), x, y, idx, key, L, pad_index=_BAD)
        assert _max_dev(a, b) < 1e-6, L
        assert (sa.batch_size, sa.physical_batches, sa.num_clipped) == (
            sb.batch_size,
            sb.physical_batches,
            sb.num_clipped,
        )
        k = -(-L // P)
        r = L - P * (k - 1) if k else 0
        expected = 0 if not k else 1 if r <= 1 else 3 if r <= 3 else 0
        assert with_tail.tail_for(L) == expected, L
        if K:
            assert calls[-1] == [int(expected == 1), int(expected == 3)], L
        elif expected and before[f"accumulate_tail_{expected}"] == 0:  # first use compiles
            assert with_tail.trace_counts[f"accumulate_tail_{expected}"] == 1, L
    assert with_tail.compilations == 1
    assert with_tail.tail_batch_sizes == (1, 3) and with_tail.tail_batch_size == 3
    if not K:  # both tail functions ran, each compiled once
        assert with_tail.trace_counts["accumulate_tail_1"] == 1
        assert with_tail.trace_counts["accumulate_tail_3"] == 1


def test_tail_batch_size_is_validated():
    from dpverify.errors import InvalidArgument

    assert _trainer(None).tail_batch_size == P // 2
    assert _trainer(None).tail_batch_sizes == (P // 4, P // 2)
    assert _trainer(None, tail_batch_size=0).tail_batch_size == 0
    assert _trainer(None, tail_batch_size=()).tail_batch_sizes == ()
    assert _trainer(None, tail_batch_size=[2, 0, 1, 2]).tail_batch_sizes == (1, 2)
    with pytest.raises(InvalidArgument, match="tail_batch_size=4 must be below"):
        _trainer(None, tail_batch_size=P)
    with pytest.raises(InvalidArgument, match=r"tail_batch_size=\(1, 4\) must be below"):
        _trainer(None, tail_batch_size=(1, 4))
    with pytest.raises(InvalidArgument, match="tail_batch_size"):
        _trainer(None, tail_batch_size=-1)


def test_fused_loop_has_a_dynamic_trip_count(problem):
    # Unused buffer rows are not computed on: the loop is a while over count.
    x, y, params = problem
    tr = _trainer(50)
    opt = optax.adam(0.05)
    tr.step(params, opt.init(params), x, y, _indices(5, 0), jax.random.key(0), 0)
    jaxpr = str(
        jax.make_jaxpr(tr._fused_impl)(
            params,
            opt.init(params),
            x,
            y,
            np.zeros((50, P), np.int32),
            np.zeros((50, P), bool),
            np.int32(1),
            jax.random.key(0),
            np.uint32(0),
        )
    )
    assert "while[" in jaxpr and "scan[" not in jaxpr


@pytest.mark.parametrize(
    ("n", "q", "p"), [(60000, 256 / 60000, 32), (1000, 0.001, 1), (50000, 0.02, 64)]
)
def test_default_buffer_overflows_with_negligible_probability(n, q, p):
    K = default_fused_batches(n * q, p)
    assert K >= 1
    assert stats.binom.sf(K * p, n, q) < 1e-8  # P(L > K·p)
    assert K * p < n * q + 7 * np.sqrt(n * q) + 6 + p  # and not much larger


def test_fused_batches_is_validated():
    from dpverify.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="fused_batches"):
        _trainer(-1)


def test_automatic_k_is_fused_for_mlp_and_off_for_conv_on_cpu(problem):
    from trainers.models import CNN

    x, y, params = problem
    tr = _trainer(None)
    assert tr.fused_batches is None
    tr.step(params, tr.optimizer.init(params), x, y, _indices(5, 0), jax.random.key(0), 0)
    assert tr.fused_batches == default_fused_batches(D, P) and tr.trace_counts["fused"] == 1
    if jax.default_backend() != "cpu":
        return
    model = CNN(num_classes=3, channels=(2,), groups=2)
    xi = np.random.default_rng(0).random((12, 6, 6, 1)).astype(np.float32)
    yi = np.zeros(12, np.int32)
    cp = model.init(jax.random.key(0), xi[:1])["params"]
    cfg = DPSGDConfig(clip_norm=C, noise_multiplier=SIGMA, denominator=D, physical_batch_size=P)
    conv = MaskedDPSGD(lambda p_, xb: model.apply({"params": p_}, xb), optax.sgd(0.1), cfg)
    conv.step(cp, conv.optimizer.init(cp), xi, yi, np.arange(5), jax.random.key(0), 0)
    assert conv.fused_batches == 0
    assert conv.trace_counts == {  # L = 5, p = 4: one full batch and the 1-row tail batch
        "fused": 0,
        "init": 1,
        "accumulate": 1,
        "accumulate_tail_1": 1,
        "accumulate_tail_2": 0,
        "finalize": 1,
    }


def test_automatic_k_is_off_on_cpu_for_a_heavy_physical_batch(problem, monkeypatch):
    """The rule compares one physical batch's matrix-product FLOPs (one example's, from
    its jaxpr, times p) with HEAVY_BATCH_FLOPS: moved just below and just above this
    MLP's own count, the same trainer takes the k + 2 path, then the fused one."""
    import trainers.dispatch as dispatch
    from trainers.jaxpr_cost import matmul_flops

    if jax.default_backend() != "cpu":
        pytest.skip("the rule is XLA:CPU's")
    x, y, params = problem
    probe = _trainer(None)
    probe.resolve_clipping(params, x, y)
    one = matmul_flops(
        jax.make_jaxpr(lambda *a: probe._per_example_grads(*a)[0])(params, x[:1], y[:1])
    )
    # Dense 4→5 and 5→3: forward 2·(4·5 + 5·3) = 70 FLOPs; the gradient's products
    # at least double it.
    assert one >= 140
    for threshold, expected in ((one * P, 0), (one * P + 1, default_fused_batches(D, P))):
        monkeypatch.setattr(dispatch, "HEAVY_BATCH_FLOPS", threshold)
        tr = _trainer(None)
        tr.step(params, tr.optimizer.init(params), x, y, _indices(5, 0), jax.random.key(0), 0)
        assert tr.fused_batches == expected, threshold
        assert tr.trace_counts["fused"] == (1 if expected else 0)
