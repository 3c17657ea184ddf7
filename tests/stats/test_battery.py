"""The Poisson-compliance battery: calibration under the null, power against shortcuts.

Statistical tests here use fixed seeds; each states its own false-failure rate
under the assumption that the battery is calibrated.
"""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dpverify.errors import InvalidArgument
from dpverify.samplers import PoissonSampler, make_sampler, step_rng
from dpverify.stats import TEST_NAMES, battery_from_ledger, holm, run_battery
from dpverify.testing import sampler_configs

# The power study's size (issue 3): N=1e4, q=0.01, T=500, alpha=1e-3.
N, Q, T, ALPHA = 10_000, 0.01, 500, 1e-3
SEEDS = range(20)


def _battery(sampler, steps=T, *, n=N, q=Q, alpha=ALPHA, cap=None):
    return run_battery(
        (sampler.sample(t) for t in range(steps)),
        dataset_size=n,
        sampling_rate=q,
        alpha=alpha,
        cap=cap,
    )


# --------------------------------------------------------------------------- null calibration


def _acceptance_interval(trials, p, level=0.99):
    lo, hi = stats.binom.interval(level, trials, p)
    return lo / trials, hi / trials


@pytest.mark.parametrize("source", ["PoissonSampler", "numpy_bernoulli"])
def test_false_positive_rate_is_alpha(source):
    """600 small honest ledgers at alpha=0.05: the battery's rejection rate lies in the
    99% binomial acceptance interval of 0.05, [0.028, 0.075] (this test fails with
    probability ~1% if the battery is exactly calibrated; measured over 3000 ledgers:
    0.047 for both sources; benchmarks/stats_calibration.py measures 28 regimes).
    """
    n, q, steps, alpha, reps = 300, 0.05, 100, 0.05, 600
    rejected = 0
    for r in range(reps):
        if source == "PoissonSampler":
            s = PoissonSampler(n, q, seed=r)
            batches = (s.sample(t) for t in range(steps))
        else:
            rng = np.random.default_rng([2024, r])
            matrix = rng.random((steps, n)) < q
            batches = (np.flatnonzero(row) for row in matrix)
        res = run_battery(batches, dataset_size=n, sampling_rate=q, alpha=alpha)
        assert all(t.meaningful for t in res.tests), res.explain()
        rejected += not res.passed
    lo, hi = _acceptance_interval(reps, alpha)
    assert lo <= rejected / reps <= hi, rejected / reps


def test_false_positive_rate_with_a_declared_cap():
    """500 honest truncated-Poisson ledgers (cap about mean + 0.7 sd, hit by a quarter of
    the batches), cap declared, alpha=0.05: rejection rate in the 99% acceptance interval
    (fails ~1% of the time if calibrated; measured over 1000 ledgers: 0.042).
    """
    n, q, steps, alpha, reps, cap = 300, 0.05, 100, 0.05, 500, 18
    rejected = 0
    for r in range(reps):
        s = make_sampler("truncated_poisson", n, q, r, cap=cap)
        batches = (s.sample(t) for t in range(steps))
        res = run_battery(batches, dataset_size=n, sampling_rate=q, alpha=alpha, cap=cap)
        rejected += not res.passed
    lo, hi = _acceptance_interval(reps, alpha)
    assert lo <= rejected / reps <= hi, rejected / reps


def test_honest_run_passes_at_the_power_study_size():
    res = _battery(PoissonSampler(N, Q, seed=99))
    assert res.passed, res.explain()
    assert [t.name for t in res.tests] == [n for n in TEST_NAMES if n != "group_membership"]
    assert all(t.meaningful for t in res.tests)
    assert all("consistent with the declared sampler" in t.reason for t in res.tests)
    assert 0.01 < res.min_detectable_relative_bias < 0.05


# --------------------------------------------------------------------------- power


class _BiasedRate:
    """Poisson at 1.05 q while the ledger declares q."""

    def __init__(self, seed):
        self.inner = PoissonSampler(N, Q * 1.05, seed)

    def sample(self, t):
        return self.inner.sample(t)


class _SeedReuse:
    """The sampling seed is reset every 50 steps: step t draws what step t mod 50 drew."""

    def __init__(self, seed):
        self.inner = PoissonSampler(N, Q, seed)

    def sample(self, t):
        return self.inner.sample(t % 50)


class _Blocks:
    """Poisson over blocks of 10 contiguous indices (for I/O locality), same expected size."""

    def __init__(self, seed):
        self.seed = seed

    def sample(self, t):
        rng = step_rng(self.seed, t)
        blocks = np.flatnonzero(rng.random(N // 10) < Q)
        return (blocks[:, None] * 10 + np.arange(10)).ravel()


def _shortcut(name):
    if name == "truncated_poisson":  # cap at mean + 2 sd, not declared
        cap = int(N * Q + 2 * np.sqrt(N * Q * (1 - Q)))
        return lambda seed: make_sampler(name, N, Q, seed, cap=cap)
    return lambda seed: make_sampler(name, N, Q, seed)


# (factory, test expected to fail, words its reason must contain)
ALTERNATIVES = {
    "shuffle": (
        _shortcut("shuffle"),
        "batch_size_dispersion",
        "vary less than Poisson sampling allows",
    ),
    "fixed_size": (_shortcut("fixed_size"), "batch_size_dispersion", "fixed-size batches?"),
    "truncated_poisson": (_shortcut("truncated_poisson"), "truncation_scan", "undeclared cap"),
    "balls_in_bins": (_shortcut("balls_in_bins"), "inclusion_count_dispersion", "once per epoch"),
    "shuffle_binomial": (_shortcut("shuffle_binomial"), "consecutive_overlap", "(shuffling)"),
    "q_plus_5_percent": (_BiasedRate, "total_inclusions", "above the declared 0.01"),
    "seed_reused_every_50": (_SeedReuse, "lagged_overlap_scan", "50 steps apart"),
    "blocks_of_10": (_Blocks, "adjacent_index_pairs", "contiguous"),
}


@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_shortcut_is_flagged_with_high_power(name):
    """Every one of 20 seeds is rejected, by the expected test, with its reason in words.

    20/20 alone bounds the power below by 0.86 (95%); the margin supports >= 0.99: the
    expected test's Holm-adjusted p-value stays below alpha/10 on every seed, i.e. the
    departure is detected many standard errors beyond the rejection threshold.
    """
    factory, expected, words = ALTERNATIVES[name]
    worst = 0.0
    for seed in SEEDS:
        res = _battery(factory(seed))
        assert not res.passed, res.explain()
        hit = res.test(expected)
        assert hit.rejected, res.explain()
        assert words in hit.reason, hit.reason
        worst = max(worst, hit.adjusted_p_value)
    assert worst <= ALPHA / 10, worst


def test_seed_reuse_also_found_as_repeated_batches_at_any_lag():
    class Reuse:
        def __init__(self):
            self.inner = PoissonSampler(N, Q, 1)

        def sample(self, t):
            return self.inner.sample(t % 300)  # lag 300: beyond the overlap scan's window

    res = _battery(Reuse())
    assert res.test("repeated_batches").rejected
    assert "same batch" in res.test("repeated_batches").reason


# --------------------------------------------------------------------------- declared cap


def test_declared_cap_is_the_null():
    cap = 110
    ok = _battery(make_sampler("truncated_poisson", N, Q, 4, cap=cap), cap=cap)
    assert ok.passed, ok.explain()
    assert ok.cap == cap
    # Without declaring the cap, the same run fails.
    assert not _battery(make_sampler("truncated_poisson", N, Q, 4, cap=cap)).passed


def test_batch_above_the_declared_cap_fails():
    s = PoissonSampler(N, Q, 5)
    batches = [s.sample(t) for t in range(200)]
    cap = max(b.size for b in batches) - 1
    res = run_battery(batches, dataset_size=N, sampling_rate=Q, cap=cap)
    support = res.test("batch_size_support")
    assert support.rejected and support.p_value == 0.0
    assert f"the declared cap is {cap}" in support.reason
    assert res.diagnosis == support.reason


# --------------------------------------------------------------------------- small / bad input


def test_tiny_runs_say_they_are_underpowered():
    s = PoissonSampler(50, 0.1, 0)
    res = run_battery((s.sample(t) for t in range(3)), dataset_size=50, sampling_rate=0.1)
    assert res.passed
    assert res.underpowered
    assert all("not enough data" in t.reason or "few steps" in t.reason for t in res.underpowered)
    empty = run_battery([], dataset_size=50, sampling_rate=0.1)
    exact = {"batch_size_support"}
    assert empty.steps == 0 and empty.passed
    assert {t.name for t in empty.underpowered} == set(TEST_NAMES) - exact - {"group_membership"}
    json.dumps(empty.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        (np.array([3, 2]), "strictly increasing"),
        (np.array([1, 1]), "strictly increasing"),
        (np.array([5, 50]), "outside [0, dataset_size=50)"),
        (np.array([0.5]), "integer"),
    ],
)
def test_malformed_batches_are_refused(batch, words):
    with pytest.raises(InvalidArgument, match="step 1") as info:
        run_battery([np.array([1, 2]), batch], dataset_size=50, sampling_rate=0.1)
    assert words in str(info.value)


def test_bad_arguments():
    with pytest.raises(InvalidArgument, match="sampling_rate"):
        run_battery([], dataset_size=10, sampling_rate=0.0)
    with pytest.raises(InvalidArgument, match="alpha"):
        run_battery([], dataset_size=10, sampling_rate=0.5, alpha=1.0)


def test_result_serialises_and_explains():
    res = _battery(make_sampler("fixed_size", N, Q, 0), steps=100)
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["passed"] is False and "batch_size_dispersion" in d["failures"]
    text = res.explain()
    assert text.startswith("FAIL") and "fixed-size batches?" in text
    with pytest.raises(InvalidArgument):
        res.test("nope")


# --------------------------------------------------------------------------- Holm


def test_holm_matches_the_textbook_procedure():
    rejected, adjusted = holm([0.01, 0.04, 0.03, 0.005], 0.05)
    assert rejected == [True, False, False, True]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_weighted_holm_gives_small_weights_small_shares():
    # Weight 0.01 of 2.01: p must be <= alpha * 0.01 / 2.01 to reject first.
    rejected, _ = holm([0.001, 0.5, 0.5], 0.05, [0.01, 1.0, 1.0])
    assert rejected == [False, False, False]
    rejected, _ = holm([1e-6, 0.01, 0.5], 0.05, [0.01, 1.0, 1.0])
    assert rejected == [True, True, False]
    with pytest.raises(InvalidArgument):
        holm([0.1], 0.05, [0.0])


# --------------------------------------------------------------------------- ledgers


def _fake_ledger(sampler, steps, *, resume_at=None, cap=None):
    from dpverify.ledger import RunHeader, Step

    header = RunHeader(
        dataset_size=sampler.dataset_size,
        sampler=sampler.name,
        sampling_rate=sampler.sampling_rate,
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=1e-5,
        sampler_params={} if cap is None else {"cap": cap},
    )
    executed = [Step(step=t, indices=sampler.sample(t)) for t in range(steps)]
    if resume_at is not None:
        executed += [Step(step=t, indices=sampler.sample(t)) for t in range(resume_at, steps)]

    @dataclasses.dataclass
    class Ledger:
        header: object
        steps: tuple

    return Ledger(header=header, steps=tuple(executed))


def test_battery_from_ledger_object_uses_one_execution_per_step():
    s = PoissonSampler(2000, 0.05, 3)
    once = battery_from_ledger(_fake_ledger(s, 200))
    resumed = battery_from_ledger(_fake_ledger(s, 200, resume_at=150))
    assert once.passed and resumed.passed
    assert resumed.steps == once.steps == 200
    assert resumed.to_dict() == once.to_dict()


def test_battery_from_ledger_reads_the_cap():
    s = make_sampler("truncated_poisson", 2000, 0.05, 3, cap=100)
    res = battery_from_ledger(_fake_ledger(s, 200, cap=100))
    assert res.cap == 100 and res.passed


def _write_ledger(path, sampler, runs, cap=None):
    """Write a ledger executing ``runs`` = [(first, stop), ...]; each run after the first resumes."""
    from dpverify.ledger import LedgerWriter, Step

    header = _fake_ledger(sampler, 0, cap=cap).header
    for i, (first, stop) in enumerate(runs):
        if i == 0:
            writer = LedgerWriter.create(path, header)
        else:
            writer = LedgerWriter.resume(path, step=first)
        with writer as w:
            for t in range(first, stop):
                w.append(Step(step=t, indices=sampler.sample(t)))


@pytest.mark.parametrize(
    "runs",
    [
        [(0, 150)],
        [(0, 120), (100, 150)],  # resumed from an earlier checkpoint: 100..119 run twice
        [(0, 150), (90, 110)],  # resumed, then stopped before step 149: last runs out of order
    ],
)
def test_battery_from_ledger_path_streams_last_executions(tmp_path, runs):
    ledger = pytest.importorskip("dpverify.ledger")
    if not hasattr(ledger, "LedgerWriter"):
        pytest.skip("ledger writer not available yet")
    s = make_sampler("fixed_size", 2000, 0.05, 3)
    path = tmp_path / "ledger"
    _write_ledger(path, s, runs)
    from_path = battery_from_ledger(path)
    in_memory = battery_from_ledger(ledger.read_ledger(path))
    reference = battery_from_ledger(_fake_ledger(s, 150))
    assert from_path.to_dict() == in_memory.to_dict() == reference.to_dict()
    # fixed_size is declared: its own null (constant size, independent subsets) holds.
    assert from_path.passed, from_path.explain()
    assert from_path.sampler == "fixed_size"


def test_battery_from_ledger_refuses_changing_rates():
    from dpverify.ledger import Step

    s = PoissonSampler(2000, 0.05, 3)
    fake = _fake_ledger(s, 10)
    fake.steps = (*fake.steps[:5], Step(step=5, indices=s.sample(5), sampling_rate=0.1))
    with pytest.raises(InvalidArgument, match=r"2 segments"):
        battery_from_ledger(fake)


# --------------------------------------------------------------------------- robustness


@settings(max_examples=40, deadline=None)
@given(
    config=sampler_configs(max_dataset_size=300, max_steps=40, min_sampling_rate=1e-3),
    cap=st.one_of(st.none(), st.integers(1, 50)),
)
def test_battery_never_crashes_on_valid_input(config, cap):
    """Any valid configuration gives p-values in [0, 1] and a serialisable result."""
    sampler = (
        config.build(PoissonSampler)
        if cap is None
        else make_sampler(
            "truncated_poisson", config.dataset_size, config.sampling_rate, config.seed, cap=cap
        )
    )
    res = run_battery(
        (sampler.sample(t) for t in range(config.steps)),
        dataset_size=config.dataset_size,
        sampling_rate=config.sampling_rate,
        cap=cap,
    )
    assert all(0.0 <= t.p_value <= 1.0 for t in res.tests)
    json.dumps(res.to_dict(), allow_nan=False)


def test_cap_far_below_the_mean_is_a_point_mass():
    """Found by Hypothesis: min(Binomial(135, 0.9375), 1) has variance ~1e-300."""
    s = make_sampler("truncated_poisson", 135, 0.9375, 0, cap=1)
    res = run_battery(
        (s.sample(t) for t in range(5)), dataset_size=135, sampling_rate=0.9375, cap=1
    )
    assert res.passed
    assert not res.test("batch_size_dispersion").meaningful


@pytest.mark.parametrize(("qn", "n", "steps"), [(2.0, 1000, 500), (0.5, 10, 500)])
def test_small_expected_batches_are_calibrated(qn, n, steps):
    """300 honest ledgers with often-empty batches at alpha = 0.05 (q·N = 2 was refuted 37 %
    of the time when the repeated-batches test used an unconditional Poisson null and tests
    without a meaningful null voted): the rate is below the upper end of the 99 % binomial
    acceptance interval of alpha (fails <= 0.5 % of the time if the battery is calibrated or
    conservative; the measured rates of the whole table are in docs/statistics.md)."""
    q, reps, alpha = qn / n, 300, 0.05
    rejected = 0
    for r in range(reps):
        rng = np.random.Generator(np.random.Philox([31, r]))
        sizes = rng.binomial(n, q, size=steps)
        batches = (np.sort(rng.choice(n, k, replace=False, shuffle=False)) for k in sizes)
        res = run_battery(batches, dataset_size=n, sampling_rate=q, alpha=alpha)
        rejected += not res.passed
    _, hi = _acceptance_interval(reps, alpha)
    assert 0 < rejected / reps <= hi, rejected / reps
