"""epsilon_poisson (cached, cheap RDP) and calibrate_noise_multiplier (bisection)."""

import math

import dp_accounting as dpa
import pytest
from dp_accounting import rdp

from dpverify.accounting import calibrate_noise_multiplier, epsilon_poisson
from dpverify.accounting.calibration import NoiseBelowTightFloor
from dpverify.errors import InvalidArgument


def test_rdp_fast_path_equals_the_library():
    for steps in (1, 10, 1234):
        acc = rdp.RdpAccountant()
        acc.compose(
            dpa.SelfComposedDpEvent(
                dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.1)), steps
            )
        )
        assert epsilon_poisson(0.01, 1.1, steps, 1e-5, "rdp") == pytest.approx(
            acc.get_epsilon(1e-5), rel=1e-10
        )


def test_rdp_progress_bar_calls_are_monotone_in_steps():
    # Their cost (~ms per call) is measured in benchmarks/accounting_guards.py.
    values = [epsilon_poisson(0.02, 0.9, t, 1e-5, "rdp") for t in range(1, 201)]
    assert values == sorted(values)


def test_edge_values():
    assert epsilon_poisson(0.01, 1.0, 0, 1e-5) == 0.0
    assert math.isinf(epsilon_poisson(0.01, 0.0, 10, 1e-5))
    with pytest.raises(InvalidArgument, match="accountant"):
        epsilon_poisson(0.01, 1.0, 10, 1e-5, "moments")


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibration_meets_the_target_tightly(accountant):
    q, steps, delta, target = 0.02, 200, 1e-5, 2.0
    sigma = calibrate_noise_multiplier(q, steps, delta, target, accountant)
    assert epsilon_poisson(q, sigma, steps, delta, accountant) <= target
    # 1% less noise overshoots: the answer is (nearly) the smallest such σ
    assert epsilon_poisson(q, sigma * 0.99, steps, delta, accountant) > target


def test_calibration_unreachable_and_bad_input():
    with pytest.raises(InvalidArgument, match="unreachable"):
        calibrate_noise_multiplier(1.0, 10_000, 1e-9, 1e-4, "rdp")
    with pytest.raises(InvalidArgument, match="target_epsilon"):
        calibrate_noise_multiplier(0.01, 100, 1e-5, 0.0)


def test_huge_target_is_refused_quickly_by_tight_accountants():
    # Before the σ floor, PLD at σ ≈ 0.02 ran for minutes (speed:
    # benchmarks/accounting_guards.py); the refusal names the floor and RDP's σ.
    with pytest.raises(NoiseBelowTightFloor, match="use the RDP accountant") as info:
        calibrate_noise_multiplier(1.0, 1, 0.5, 100.0, "pld")
    assert info.value.floor > 0 and 0.05 < info.value.rdp_sigma
    sigma = calibrate_noise_multiplier(1.0, 1, 0.5, 100.0, "rdp")
    assert 0.05 < sigma < 0.1
