"""The headline tells uneven per-example rates from blocks and seed reuse, and names the extreme.

Every batch stream here is a shortcut refuted at family-wise α = 1e-3 (the
tests assert on the headline only after asserting the refutation); the
honest control passes with probability ≥ 1 − 1e-3.  Seeds are fixed.
"""

import numpy as np

from dpverify.stats import run_battery

N, Q, T = 2_000, 0.01, 1_000


def _run(batches):
    return run_battery(batches, dataset_size=N, sampling_rate=Q, alpha=1e-3)


def _poisson(rng, rate=Q, n=N):
    return np.flatnonzero(rng.random(n) < rate)


def test_an_example_in_every_batch_is_not_called_seed_reuse():
    """One example always included lifts the overlap at every lag evenly: uneven rates, named."""
    rng = np.random.default_rng(21)
    res = _run([np.union1d(_poisson(rng), [7]) for _ in range(T)])
    assert not res.passed
    assert res.diagnosis.startswith("some examples are included much more often"), res.diagnosis
    assert "an example was included in 1,000 of 1,000 steps" in res.diagnosis, res.diagnosis
    assert "seed" not in res.diagnosis


def test_half_the_data_set_never_sampled_is_not_called_blocks():
    """Sampling only the first half (at 2q) doubles neighbouring pairs; the counts explain it."""
    rng = np.random.default_rng(22)
    res = _run([_poisson(rng, 2 * Q, N // 2) for _ in range(T)])
    assert not res.passed
    assert "blocks" not in res.diagnosis, res.diagnosis
    assert "1,000 of 2,000 examples were never sampled" in res.diagnosis, res.diagnosis


def test_seed_reuse_at_one_lag_is_still_named():
    rng = np.random.default_rng(23)
    batches = []
    for t in range(T):
        batches.append(batches[t - 50] if t >= 50 and t % 50 == 0 else _poisson(rng))
    res = _run(batches)
    assert not res.passed
    assert "reused" in res.diagnosis, res.diagnosis


def test_real_blocks_are_still_named_blocks():
    rng = np.random.default_rng(24)
    starts = np.arange(0, N, 10)
    batches = []
    for _ in range(T):
        chosen = starts[rng.random(starts.size) < Q]
        batches.append((chosen[:, None] + np.arange(10)).ravel())
    res = _run(batches)
    assert not res.passed
    assert "blocks" in res.diagnosis, res.diagnosis


def test_honest_control_passes():
    rng = np.random.default_rng(25)
    assert _run([_poisson(rng) for _ in range(T)]).passed


def test_fixed_size_batches_are_named_not_called_a_cap():
    """Independent uniform subsets of one size declared as Poisson: fixed-size batches,
    with the wrong overall rate added when the size is not q·N (issue 10.12)."""
    rng = np.random.default_rng(26)
    for size, wrong_rate in ((20, False), (48, True)):
        res = _run([np.sort(rng.choice(N, size, replace=False)) for _ in range(T)])
        assert not res.passed
        assert res.diagnosis.startswith("fixed-size batches, not Poisson sampling"), res.diagnosis
        assert f"all 1,000 batches have exactly {size} examples" in res.diagnosis
        assert "sd 4.45" in res.diagnosis and "cap" not in res.diagnosis
        assert ("above the declared 0.01" in res.diagnosis) == wrong_rate, res.diagnosis


def test_a_real_cap_is_still_named_a_cap():
    """Poisson batches truncated at mean + 2.2 sd vary in size: the cap, not fixed size."""
    rng = np.random.default_rng(27)
    res = run_battery(
        [_poisson(rng, 0.01, 10_000)[:122] for _ in range(T)],
        dataset_size=10_000,
        sampling_rate=0.01,
        alpha=1e-3,
    )
    assert not res.passed
    assert res.diagnosis.startswith("an undeclared cap on batch size at 122"), res.diagnosis
