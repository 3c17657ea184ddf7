"""Declared samplers are verified, never trusted: each has its own null.

Honest runs pass (each at family-wise α = 1e-3: the false-failure probability
of every honest assertion here is at most 1e-3); shortcuts declared as an
accountable sampler fail, with the most specific cause in the headline.
"""

import numpy as np
import pytest

from dpverify.samplers import CyclicPoissonSampler, make_sampler
from dpverify.stats import run_battery
from dpverify.stats._format import number, times

N, Q, T = 10_000, 0.01, 500


def _run(batches, **kw):
    kw.setdefault("dataset_size", N)
    kw.setdefault("sampling_rate", Q)
    return run_battery(batches, alpha=1e-3, **kw)


# ----------------------------------------------------------------------------- fixed_size


def _fixed(seed, n=N, b=100, steps=T):
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, b, replace=False)) for _ in range(steps)]


@pytest.mark.parametrize("seed", range(3))
def test_honest_fixed_size_passes(seed):
    res = _run(_fixed(seed), sampler="fixed_size", batch_size=100)
    assert res.passed, res.explain()
    assert res.test("inclusion_count_dispersion").meaningful


def test_fixed_size_batches_of_the_whole_data_set_fail():
    batches = [np.arange(N)] * 50
    res = _run(batches, sampler="fixed_size", batch_size=100)
    assert not res.passed and res.test("batch_size_support").rejected
    assert "cannot produce" in res.diagnosis and "exactly 100" in res.diagnosis


def test_fixed_size_declared_1_with_real_batches_of_240_fails():
    res = _run(_fixed(0, b=240), sampler="fixed_size", batch_size=1, sampling_rate=1 / N)
    assert not res.passed and "step 0 has 240 examples" in res.diagnosis


def test_fixed_size_above_q_times_n_fails():
    res = _run(_fixed(0, b=240), sampler="fixed_size", batch_size=240, sampling_rate=0.01)
    assert not res.passed and "above the declared q" in res.diagnosis


def test_epoch_shuffled_fixed_size_batches_fail_as_shuffling():
    s = make_sampler("shuffle", N, Q, 1)
    res = _run([s.sample(t) for t in range(T)], sampler="fixed_size", batch_size=100)
    assert not res.passed
    assert res.diagnosis.startswith("shuffling, not independent sampling: every batch has exactly 100")


# ----------------------------------------------------------------------------- cyclic Poisson


@pytest.mark.parametrize("seed", range(3))
def test_honest_cyclic_poisson_passes(seed):
    s = CyclicPoissonSampler(N, Q, seed, cycle_length=4)
    res = _run([s.sample(t) for t in range(2000)], sampler="cyclic_poisson", cycle_length=4)
    assert res.passed, res.explain()
    assert res.test("group_membership").p_value == 1.0
    assert res.test("consecutive_overlap").meaningful  # at lag b, within the group


def test_jax_privacy_cyclic_poisson_passes_the_cyclic_null():
    """Batches from jax_privacy 2.0's own CyclicPoissonSampling (q = sampling_prob / b)."""
    bs = pytest.importorskip("jax_privacy.batch_selection")
    b, p = 5, 0.05
    strategy = bs.CyclicPoissonSampling(sampling_prob=p, iterations=1500, cycle_length=b)
    batches = [np.sort(np.asarray(x, dtype=np.int64)) for x in strategy.batch_iterator(N, rng=3)]
    res = _run(batches, sampler="cyclic_poisson", cycle_length=b, sampling_rate=p / b)
    assert res.passed, res.explain()
    # Declared as plain Poisson the same batches fail: examples only come back every b steps.
    assert not _run(batches, sampling_rate=p / b).passed


def test_poisson_batches_declared_cyclic_fail_group_membership():
    s = make_sampler("poisson", N, Q, 2)
    res = _run([s.sample(t) for t in range(400)], sampler="cyclic_poisson", cycle_length=4)
    assert not res.passed and res.test("group_membership").rejected
    assert "more than one group" in res.diagnosis


# ----------------------------------------------------------------------------- one-sided rate


def test_declared_q_above_the_real_rate_is_conservative_not_refuted():
    """Batches at q = 0.01 declared at 2.4% above: pass, flagged conservative."""
    s = make_sampler("poisson", 60_000, 0.01, 4)
    batches = [s.sample(t) for t in range(2000)]
    res = run_battery(batches, dataset_size=60_000, sampling_rate=0.01 * 1.024, alpha=1e-3)
    assert res.passed, res.explain()
    assert res.conservative and res.observed_rate < 0.01 * 1.024
    # The real rate above the declared one refutes.
    low = run_battery(batches, dataset_size=60_000, sampling_rate=0.01 / 1.024, alpha=1e-3)
    assert not low.passed and "above the declared" in low.diagnosis


# ----------------------------------------------------------------------------- headline


def test_dataloader_drop_last_false_is_named():
    """A shuffled DataLoader (batch 240, drop_last=False): fixed sizes, a short batch per epoch."""
    n, b = 6_000, 240 - 1  # 6000 = 25·239 + 25: a short last batch of 25 every epoch
    rng = np.random.default_rng(0)
    batches = []
    while len(batches) < 500:
        perm = rng.permutation(n)
        batches += [np.sort(perm[i : i + b]) for i in range(0, n, b)]
    res = run_battery(batches[:500], dataset_size=n, sampling_rate=b / n, alpha=1e-3)
    assert not res.passed
    assert "DataLoader with drop_last=False" in res.diagnosis, res.diagnosis


def test_torch_distributed_sampler_is_named():
    """Real torch DistributedSampler (N = 1001, world size 4, per-rank batch 30), global batches.

    Each epoch: one permutation padded to 1004 (3 examples twice), rank r takes every 4th index,
    each rank's DataLoader cuts 251 into 8 batches of 30 and one of 11: global batches of 120
    and a short one of 44.  The headline names the DistributedSampler, not a rate or a cap.
    """
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, DistributedSampler

    n, world, b = 1001, 4, 30
    data = list(range(n))
    batches = []
    for epoch in range(40):
        loaders = []
        for rank in range(world):
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            loaders.append(DataLoader(data, batch_size=b, sampler=sampler))
        for parts in zip(*loaders, strict=True):
            batches.append(np.sort(torch.cat(parts).numpy()))
    assert {len(x) for x in batches} == {120, 44}
    res = run_battery(batches, dataset_size=n, sampling_rate=120 / n, alpha=1e-3)
    assert not res.passed
    assert "DistributedSampler" in res.diagnosis and "3 used twice" in res.diagnosis, res.diagnosis


def test_seed_reuse_is_named_before_other_rejections():
    s = make_sampler("poisson", N, Q, 5)
    batches = [s.sample(t % 100) for t in range(T)]  # sampler re-seeded every 100 steps
    res = _run(batches)
    assert not res.passed
    assert "seed" in res.diagnosis and "reused" in res.diagnosis, res.diagnosis


def test_numbers_print_as_people_read_them():
    assert times(5.1e-29) == "0×"
    assert times(0.98) == "0.98×"
    assert times(1.002) == "1.002×"
    assert times(1.05) == "1.05×"
    assert times(12.3) == "12×"
    assert number(5.1e-29) == "0" and number(10000.0) == "10,000" and number(3.25) == "3.25"
    fixed = _run(_fixed(1))  # fixed-size batches declared Poisson
    assert "variance 0× the expected" in fixed.test("batch_size_dispersion").reason


# ----------------------------------------------------------------------------- what it cannot see


def test_cannot_see_is_computed_for_the_run_and_is_honest():
    """The stated smallest oversampled group is a real detection limit: twice that many
    examples at twice the rate are refuted on every one of 3 seeds (power at the stated
    size is 0.8 by construction; at twice the size it is ~1)."""
    short = _run(_fixed(0, b=100, steps=200), sampler="fixed_size", batch_size=100)
    long = _run(_fixed(0, b=100, steps=800), sampler="fixed_size", batch_size=100)
    assert short.cannot_see["oversampled_examples"] > long.cannot_see["oversampled_examples"]
    s = make_sampler("poisson", N, Q, 0)
    base = _run([s.sample(t) for t in range(T)])
    group = base.cannot_see["oversampled_examples"]
    assert 50 < group < 400 and base.cannot_see["max_lag"] == 64
    assert 0 < base.cannot_see["rate_bias"] < 0.05
    for seed in range(3):
        rng = np.random.default_rng(seed)
        hot = np.arange(2 * group)
        batches = []
        for _ in range(T):
            size = rng.binomial(N - 2 * group, Q)
            cold = 2 * group + rng.choice(N - 2 * group, size, replace=False, shuffle=False)
            warm = hot[rng.random(hot.size) < 2 * Q]
            batches.append(np.sort(np.concatenate((cold, warm))))
        res = _run(batches)
        assert res.test("inclusion_count_dispersion").rejected, res.explain()


def test_contiguous_blocks_are_named_before_the_repeats_they_cause():
    """Windows of contiguous indices at random offsets repeat by chance; blocks are the cause."""
    rng = np.random.default_rng(11)
    batches = []
    for _ in range(T):
        b = int(rng.binomial(N, Q))
        o = int(rng.integers(0, N - b))
        batches.append(np.arange(o, o + b))
    res = _run(batches)
    assert not res.passed
    assert "neighbouring indices" in res.diagnosis and "blocks" in res.diagnosis, res.diagnosis


@pytest.mark.parametrize(("group", "factor"), [(200, 3.0), (N // 2, 0.5)])
def test_examples_at_different_rates_are_named_not_shuffling(group, factor):
    """Some examples sampled at factor·q: counts too uneven, not epoch structure or seed reuse."""
    rng = np.random.default_rng(12)
    p = np.full(N, Q)
    p[:group] = factor * Q
    batches = [np.flatnonzero(rng.random(N) < p) for _ in range(T)]
    res = _run(batches)
    assert not res.passed
    assert res.diagnosis.startswith("some examples are included much more often"), res.diagnosis
