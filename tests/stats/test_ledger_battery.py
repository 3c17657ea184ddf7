"""The battery over a ledger: every execution, per segment of constant recorded rate.

Honest ledgers are tested at family-wise α = 1e-3 (each honest assertion fails
with probability at most 1e-3 for its fixed seed); shortcuts are far beyond.
"""

import dataclasses

import numpy as np
import pytest

from dpverify.ledger import RunHeader, Step
from dpverify.samplers import PoissonSampler, make_sampler
from dpverify.stats import sampling_from_ledger, step_addressable

N, Q = 10_000, 0.01


@dataclasses.dataclass
class _Ledger:
    header: object
    steps: tuple


def _header(**kw):
    fields = dict(
        dataset_size=N,
        sampler="poisson",
        sampling_rate=Q,
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=1e-6,
        software={"dpverify": "0", "jaxlib": "0"},
    )
    fields.update(kw)
    return RunHeader(**fields)


def _steps(sampler, steps, *, first=0, rate=None):
    return [Step(step=t, indices=sampler.sample(t), sampling_rate=rate) for t in range(first, steps)]


def test_executions_before_a_resume_are_tested():
    """50 full-data steps, then a resume at step 0 and 500 honest steps: refuted."""
    s = PoissonSampler(N, Q, 1)
    full = [Step(step=t, indices=np.arange(N)) for t in range(50)]
    res = sampling_from_ledger(_Ledger(_header(), tuple(full + _steps(s, 500))))
    assert not res.passed
    assert res.executions == 550 and res.logical_steps == 500 and res.redrawn == 50
    assert "50 re-executed step(s) drew a different batch" in res.findings[0]
    assert res.segments[0].battery.test("total_inclusions").rejected
    # Not step-addressable (another framework's loader): no finding, but the battery still fails.
    foreign = sampling_from_ledger(
        _Ledger(_header(software={"torch": "2"}), tuple(full + _steps(s, 500)))
    )
    assert not foreign.findings and not foreign.passed


def test_reproduced_re_executions_enter_once():
    s = PoissonSampler(N, Q, 2)
    once = sampling_from_ledger(_Ledger(_header(), tuple(_steps(s, 300))))
    again = sampling_from_ledger(_Ledger(_header(), tuple(_steps(s, 300) + _steps(s, 300, first=200))))
    assert once.passed and again.passed, again.segments[0].battery.explain()
    assert again.reproduced == 100 and again.segments[0].batches == 300
    assert once.segments[0].battery.to_dict() == again.segments[0].battery.to_dict()


def test_step_addressable_is_read_from_the_header():
    assert step_addressable(_header())
    assert not step_addressable(_header(software={"dpverify": "0", "opacus": "1", "torch": "2"}))
    assert step_addressable(_header(software={}, sampler_params={"step_addressable": True}))


def test_recorded_rate_below_the_real_one_refutes():
    """Honest batches at q recorded as q/10 (the accountant would give a tenth of ε)."""
    s = PoissonSampler(N, Q, 3)
    res = sampling_from_ledger(_Ledger(_header(sampling_rate=Q / 10), tuple(_steps(s, 500, rate=Q / 10))))
    assert not res.passed and not res.rates_verified
    assert "above the declared" in res.segments[0].battery.diagnosis


def test_float32_rates_are_one_rate_and_shuffling_is_still_caught():
    """A shuffled DataLoader logging q as float32 (0.009999999776): one segment, refuted."""
    s = make_sampler("shuffle", N, Q, 4)
    rate = float(np.float32(Q))
    res = sampling_from_ledger(_Ledger(_header(), tuple(_steps(s, 500, rate=rate))))
    assert len(res.segments) == 1 and not res.passed
    assert res.segments[0].battery.diagnosis.startswith("shuffling")


def test_second_half_at_a_new_rate_is_its_own_segment():
    """Honest Poisson at q, then a shuffled DataLoader at 2q: the second segment fails."""
    a = PoissonSampler(N, Q, 5)
    b = make_sampler("shuffle", N, 2 * Q, 5)
    steps = _steps(a, 400) + [Step(step=t, indices=b.sample(t), sampling_rate=2 * Q) for t in range(400, 800)]
    res = sampling_from_ledger(_Ledger(_header(), tuple(steps)))
    assert [s.status for s in res.segments] == ["pass", "fail"]
    assert res.segments[1].first_step == 400 and res.segments[1].sampling_rate == 2 * Q


def test_a_rate_perturbed_at_one_step_is_a_short_segment_said_so():
    s = make_sampler("shuffle", N, Q, 6)
    steps = _steps(s, 500)
    # Perturbed by 1e-9 (within float32 rounding of 0.01): one rate, shuffling refuted.
    steps[200] = dataclasses.replace(steps[200], sampling_rate=Q + 1e-9)
    res = sampling_from_ledger(_Ledger(_header(), tuple(steps)))
    assert [x.status for x in res.segments] == ["fail"]
    # Perturbed beyond float32 rounding: three segments, the middle one too short, said so.
    steps[200] = dataclasses.replace(steps[200], sampling_rate=Q * (1 + 1e-6))
    res = sampling_from_ledger(_Ledger(_header(), tuple(steps)))
    assert [x.status for x in res.segments] == ["fail", "too_short", "fail"]
    assert not res.rates_verified and not res.passed


def test_honest_per_step_rates_are_verified():
    a, b = PoissonSampler(N, Q, 7), PoissonSampler(N, 2 * Q, 7)
    steps = _steps(a, 300, rate=Q) + [Step(step=t, indices=b.sample(t), sampling_rate=2 * Q) for t in range(300, 600)]
    res = sampling_from_ledger(_Ledger(_header(), tuple(steps)))
    assert res.passed and res.rates_verified, [s.battery.explain() for s in res.segments]
    assert [s.to_dict()["rate_verified"] for s in res.segments] == [True, True]


def test_path_and_object_agree(tmp_path):
    ledger = pytest.importorskip("dpverify.ledger")
    s = PoissonSampler(2000, 0.05, 8)
    header = _header(dataset_size=2000, sampling_rate=0.05)
    path = tmp_path / "ledger"
    with ledger.LedgerWriter.create(path, header) as w:
        for st in _steps(s, 120):
            w.append(st)
    with ledger.LedgerWriter.resume(path, step=100) as w:
        for st in _steps(s, 150, first=100):
            w.append(st)
    a = sampling_from_ledger(path)
    b = sampling_from_ledger(ledger.read_ledger(path))
    assert a.reproduced == b.reproduced == 20
    assert a.segments[0].battery.to_dict() == b.segments[0].battery.to_dict()
