"""Sampling check on hand-made ledgers (the battery itself is tested in tests/stats).

Fixed seeds; the honest ledger passes unless the battery's family-wise
false-positive event (probability α = 10⁻³) happens for this seed.
"""

import numpy as np

from audits.sampling import check_sampling, last_executions
from dpverify.ledger.records import Step


def _ledger(fakes, sizes_fn, *, n=2000, q=0.05, steps=200, seed=0, **header):
    header = fakes.make_header(dataset_size=n, sampling_rate=q, **header)
    rng = np.random.default_rng(seed)
    records = [header]
    for t in range(steps):
        size = sizes_fn(rng, n, q)
        records.append(Step(step=t, indices=np.sort(rng.choice(n, size, replace=False))))
    return fakes.FakeLedger(header=header, records=tuple(records))


def test_honest_poisson_passes_with_p_value_and_power(fakes):
    ledger = _ledger(fakes, lambda rng, n, q: rng.binomial(n, q))
    r = check_sampling(ledger, alpha=1e-3)
    assert r.status == "pass", r.reason
    assert 0 < r.p_value <= 1 and r.details["alpha"] == 1e-3
    assert "cannot see: a real rate up to" in r.reason


def test_fixed_size_batches_fail_quoting_the_battery(fakes):
    ledger = _ledger(fakes, lambda rng, n, q: int(n * q))
    r = check_sampling(ledger)
    assert r.status == "fail" and r.reason.startswith("not Poisson sampling: ")
    assert r.p_value < 1e-3
    assert any(t["rejected"] for t in r.details["tests"])


def test_too_few_steps_warn(fakes):
    ledger = _ledger(fakes, lambda rng, n, q: rng.binomial(n, q), steps=1)
    r = check_sampling(ledger)
    assert r.status in ("warn", "pass")
    if r.status == "warn":
        assert "too few steps" in r.reason


def test_sampler_without_a_null_is_skipped(fakes):
    ledger = _ledger(fakes, lambda rng, n, q: int(n * q), steps=3, sampler="shuffle")
    r = check_sampling(ledger)
    assert r.status == "skip" and "has no sampling null" in r.reason


def test_last_execution_of_each_logical_step():
    a, b = Step(step=0, indices=[0]), Step(step=1, indices=[1])
    again = Step(step=1, indices=[7])
    assert last_executions([a, b, again]) == [a, again]


def test_too_few_steps_always_say_so(fakes):
    ledger = _ledger(fakes, lambda rng, n, q: rng.binomial(n, q), steps=5)
    r = check_sampling(ledger)
    assert r.status == "warn" and "too few steps" in r.reason and "unverified" in r.reason
    assert r.details["rates_verified"] is False


def test_declared_q_above_the_real_rate_passes_as_conservative(fakes):
    """Batches at q = 0.05 declared at 0.06: pass, "conservative" in the reason."""
    ledger = _ledger(fakes, lambda rng, n, q: rng.binomial(n, 0.05), q=0.06, steps=400)
    r = check_sampling(ledger)
    assert r.status == "pass" and "conservative" in r.reason, r.reason
    assert r.details["rates_verified"] is True
    assert r.details["segments"][0]["conservative"] is True


def test_fixed_size_declared_is_tested_not_trusted(fakes):
    """Shuffled fixed-size batches declared fixed_size: refuted, headline names shuffling."""
    header = fakes.make_header(
        dataset_size=2000, sampling_rate=0.05, sampler="fixed_size", sampler_params={"batch_size": 100}
    )
    rng = np.random.default_rng(0)
    records = [header]
    for t in range(200):
        if t % 20 == 0:
            perm = rng.permutation(2000)
        records.append(Step(step=t, indices=np.sort(perm[(t % 20) * 100 : (t % 20 + 1) * 100])))
    r = check_sampling(fakes.FakeLedger(header=header, records=tuple(records)))
    assert r.status == "fail"
    assert r.reason.startswith("not fixed-size (100) without replacement sampling: shuffling"), r.reason


def test_segments_are_listed_for_the_privacy_check(fakes):
    header = fakes.make_header(dataset_size=2000, sampling_rate=0.05)
    rng = np.random.default_rng(1)
    records = [header]
    for t in range(400):
        q = 0.05 if t < 200 else 0.02
        idx = np.sort(rng.choice(2000, rng.binomial(2000, q), replace=False))
        records.append(Step(step=t, indices=idx, sampling_rate=q))
    r = check_sampling(fakes.FakeLedger(header=header, records=tuple(records)))
    assert r.status == "pass", r.reason
    segs = r.details["segments"]
    assert [(s["first_step"], s["last_step"], s["sampling_rate"], s["passed"]) for s in segs] == [
        (0, 199, 0.05, True),
        (200, 399, 0.02, True),
    ]
    assert r.details["rates_verified"] is True and "2 segments" in r.reason
    # every segment's tests are listed, each tagged with its segment
    tests = r.details["tests"]
    assert {(t["segment"], t["first_step"], t["last_step"]) for t in tests} == {(0, 0, 199), (1, 200, 399)}
    names = [t["name"] for t in tests if t["segment"] == 0]
    assert names == [t["name"] for t in tests if t["segment"] == 1] and "consecutive_overlap" in names


def test_a_failing_later_segment_shows_in_the_tests(fakes):
    """Shuffled batches in the second segment only: its tests reject, the first segment's do not."""
    header = fakes.make_header(dataset_size=2000, sampling_rate=0.05)
    rng = np.random.default_rng(2)
    records = [header]
    perm = rng.permutation(2000)
    for t in range(400):
        if t < 200:
            idx = np.sort(rng.choice(2000, rng.binomial(2000, 0.05), replace=False))
            q = 0.05
        else:
            if (t - 200) % 50 == 0:
                perm = rng.permutation(2000)
            idx = np.sort(perm[((t - 200) % 50) * 40 : ((t - 200) % 50 + 1) * 40])
            q = 0.02
        records.append(Step(step=t, indices=idx, sampling_rate=q))
    r = check_sampling(fakes.FakeLedger(header=header, records=tuple(records)))
    assert r.status == "fail"
    rejected = {t["segment"] for t in r.details["tests"] if t["rejected"]}
    assert rejected == {1}


def test_memory_error_is_a_one_line_exit_2(fakes, tmp_path, monkeypatch, capsys):
    """An input the auditor cannot hold is bad input (exit 2, one line), never exit 3."""
    import audits.runner
    from dpverify.cli import main

    ledger = _ledger(fakes, lambda rng, n, q: rng.binomial(n, q), steps=30)
    path = fakes.write_ledger(tmp_path / "ledger", ledger)

    def boom(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.45 GiB for an array with shape (1000000000,)")

    monkeypatch.setattr(audits.runner, "check_sampling", boom)
    code = main(["audit", str(path), "--no-replay"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("dpverify: error: not enough memory for this input") and "7.45 GiB" in err
