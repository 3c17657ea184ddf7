"""Heterogeneous schedules (σ decay, q warm-up) against exact per-step compositions.

The references are dp-accounting's own PLD composed step by step (one PLD per
executed step, no grouping, no dpverify code): live for a short schedule, and
stored for two 1 000-step schedules (``heterogeneous_reference.json``, made by
``make_heterogeneous_reference.py`` in this folder; minutes per schedule).
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
    """40 distinct σ (1.5 → 0.8) with a q warm-up: PRV's heterogeneous composition, exact."""
    steps = 40
    schedule = [
        (min(0.02, 0.005 + 0.015 * t / 9), 1.5 - 0.7 * t / (steps - 1)) for t in range(steps)
    ]
    exact = _exact_pld(schedule, DELTA)
    report = compute_epsilon(_segments(schedule), DELTA, accountants=("prv",), max_groups=64)
    assert report.rounding is None
    prv = report.prv.details
    assert abs(prv["estimate"] - exact) <= 5e-3 * exact, (prv, exact)
    assert prv["lower"] <= exact <= prv["upper"]
    assert check_claim(report, exact).holds  # an honest claim at the exact value is certified
    assert not check_claim(report, 0.97 * exact).holds


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sigma_decay_1.5_to_0.8", "q_warmup_sigma_decay"])
def test_thousand_distinct_pairs_are_bracketed_and_never_refuted_at_the_exact_value(name):
    import sys

    sys.path.insert(0, str(HERE))
    from make_heterogeneous_reference import schedules

    exact = json.loads((HERE / "heterogeneous_reference.json").read_text())["cases"][name]
    exact = exact["pld_epsilon"]
    report = compute_epsilon(_segments(schedules()[name]), DELTA, accountants=("prv",))
    assert report.rounding and "1000 distinct (q, σ) pairs bracketed" in report.rounding
    assert report.lower <= exact <= report.upper  # the bracket holds the exact composition
    claim = check_claim(report, exact)
    assert claim.holds or not claim.verifiable, claim  # never refuted on the rounding
    assert "bracketed" in claim.reason or claim.holds
    low, high = report.prv.details["estimate_range"]
    assert low <= exact * (1 + 1e-3) and high >= exact * (1 - 1e-3)
    below = check_claim(report, 0.9 * report.lower)
    assert not below.holds and below.verifiable
