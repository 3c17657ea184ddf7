"""Heterogeneous schedules (σ decay, q warm-up) against exact per-step compositions.

The references are dp-accounting's own PLD composed step by step (one PLD per
executed step, no grouping, no dpverify code): live for a short schedule, and
stored for two 1 000-step schedules (``heterogeneous_reference.json``, made by
``python benchmarks/heterogeneous_reference.py``; ~90 s per schedule).
"""

import json
from pathlib import Path

import pytest

from dpverify.accounting import Segment, check_claim, compute_epsilon

HERE = Path(__file__).parent
DELTA = 1e-5


def _exact_pld(schedule, delta, interval=1e-3):
    from dp_accounting.pld import privacy_loss_distribution as pld

    composed = None
    for q, sigma in schedule:
        step = pld.from_gaussian_mechanism(
            sigma, sampling_prob=q, value_discretization_interval=interval
        )
        composed = step if composed is None else composed.compose(step)
    return float(composed.get_epsilon_for_delta(delta))


def _segments(schedule):
    return [Segment(sampling_rate=q, noise_multiplier=s, steps=1) for q, s in schedule]


def test_every_distinct_pair_composed_exactly_is_within_half_a_percent():
    """30 distinct σ (1.5 → 0.8) with a q warm-up: PRV's heterogeneous composition, exact."""
    steps = 30
    schedule = [
        (min(0.02, 0.005 + 0.015 * t / 9), 1.5 - 0.7 * t / (steps - 1)) for t in range(steps)
    ]
    exact = _exact_pld(schedule, DELTA)
    report = compute_epsilon(_segments(schedule), DELTA, accountants=("prv",))
    assert report.rounding is None
    prv = report.prv.details
    assert abs(prv["estimate"] - exact) <= 5e-3 * exact, (prv, exact)
    assert prv["lower"] <= exact <= prv["upper"]
    assert check_claim(report, exact).holds  # an honest claim at the exact value is certified
    assert not check_claim(report, 0.97 * exact).holds


def test_sixty_distinct_pairs_pld_is_the_exact_per_step_composition():
    """60 distinct (q, σ): PLD composes each pair (fast builder) = dp-accounting step by step."""
    steps = 60
    schedule = [
        (min(0.01, 0.002 + 0.008 * t / 19), 1.5 - 0.7 * t / (steps - 1)) for t in range(steps)
    ]
    exact = _exact_pld(schedule, DELTA)
    report = compute_epsilon(_segments(schedule), DELTA, accountants=("rdp", "pld"))
    assert report.pld.details["pairs_exact"] is True
    assert report.pld.epsilon == pytest.approx(exact, rel=1e-6)
    assert report.tight_name == "pld" and report.rounding and "rounded" in report.rounding
    assert report.rdp.epsilon >= exact  # RDP on dominating groups: still an upper bound
    honest = check_claim(report, exact)
    assert honest.holds and honest.verifiable and "rounded" in honest.reason
    low = check_claim(report, 0.98 * exact)
    assert not low.holds and low.verifiable and "rounded" in low.reason
    # within the coarse grid's allowance below PLD: neither certified nor refuted
    mid = check_claim(report, 0.997 * exact)
    assert not mid.holds and not mid.verifiable and "allowance" in mid.reason


def test_beyond_max_groups_pld_is_bracketed_and_never_refutes_on_the_rounding():
    steps = 120
    schedule = [(0.01, 1.5 - 0.7 * t / (steps - 1)) for t in range(steps)]
    segs = _segments(schedule)
    exact = compute_epsilon(segs, DELTA, accountants=("pld",)).pld.epsilon
    rounded = compute_epsilon(segs, DELTA, accountants=("pld",), max_groups=40)
    assert rounded.pld.details["pairs_exact"] is False and rounded.tight is None
    assert "PLD on 40 groups with q rounded up" in rounded.rounding
    assert exact <= rounded.pld.epsilon <= exact * 1.05  # 3 steps per group: ~2.4 %
    assert check_claim(rounded, rounded.pld.epsilon).holds
    below = check_claim(rounded, 0.9 * exact)  # no lower bound without PRV: not refuted
    assert not below.holds and not below.verifiable and "rounded" in below.reason


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sigma_decay_1.5_to_0.8", "q_warmup_sigma_decay"])
def test_thousand_distinct_pairs_within_half_a_percent_of_the_exact_composition(name):
    """The stored dp-accounting per-step references: reported ε within 0.5 %, claims decided."""
    import sys

    sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
    from heterogeneous_reference import schedules

    exact = json.loads((HERE / "heterogeneous_reference.json").read_text())["cases"][name]
    exact = exact["pld_epsilon"]
    report = compute_epsilon(_segments(schedules()[name]), DELTA, accountants=("rdp", "pld"))
    assert report.pld.details["pairs_exact"] is True
    assert abs(report.pld.epsilon - exact) <= 5e-3 * exact
    assert report.upper <= exact * 1.005
    honest = check_claim(report, exact)
    assert honest.holds and "1000 distinct (q, σ) pairs" in honest.reason
    refuted = check_claim(report, 0.98 * exact)
    assert not refuted.holds and refuted.verifiable and "rounded" in refuted.reason


def test_the_coarse_grid_only_for_pairs_composed_few_times():
    """A pair composed > 1 000 times keeps the configured grid (the coarse one errs more there)."""
    from dpverify.accounting.accountants import MAX_COARSE_GRID_COUNT, _grid_allowance, _plan

    few = [Segment(sampling_rate=0.01, noise_multiplier=1 + 0.01 * k, steps=3) for k in range(40)]
    many = [
        Segment(sampling_rate=0.01, noise_multiplier=1 + 0.01 * k, steps=MAX_COARSE_GRID_COUNT + 1)
        for k in range(40)
    ]
    coarse, fine = _plan(few, "poisson", None, 1000), _plan(many, "poisson", None, 1000)
    assert coarse.pld_fast and coarse.pld_exact and coarse.pld_h == 1e-3
    assert fine.pld_fast and fine.pld_exact and fine.pld_h == 1e-4
    assert _grid_allowance(coarse.pld_h, 1e-4) == 5e-3 and _grid_allowance(fine.pld_h, 1e-4) == 0
