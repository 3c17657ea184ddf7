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
