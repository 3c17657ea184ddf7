"""Every public reference ε (tests/accounting/reference_epsilon.json) reproduces.

The JSON holds published figures, each naming its source; the tests read
nothing outside the repository.  Cases whose source names the
tensorflow_privacy order grid use :data:`TF_PRIVACY_ORDERS`; the others use
dp-accounting's default grid.  Steps are ``ceil(epochs · N / B)`` unless given.
"""

import json
import math
from pathlib import Path

import pytest

from dpverify.accounting import TF_PRIVACY_ORDERS, Segment, compute_epsilon

CASES = json.loads((Path(__file__).parent / "reference_epsilon.json").read_text())["cases"]


def _case_id(case):
    return f"{case['source'][:40]}-sigma{case['noise_multiplier']}"


def _segment(case):
    q = case.get("sampling_rate") or case["batch_size"] / case["dataset_size"]
    steps = case.get("steps") or math.ceil(
        case["epochs"] * case["dataset_size"] / case["batch_size"]
    )
    return Segment(sampling_rate=q, noise_multiplier=case["noise_multiplier"], steps=steps)


def _close(value, expected, case):
    if "tolerance_relative" in case:
        return abs(value - expected) <= case["tolerance_relative"] * abs(expected)
    return abs(value - expected) <= case["tolerance"]


def test_every_case_is_checked_for_something():
    keys = {"rdp_epsilon", "pld_epsilon", "prv_upper"}
    assert all(keys & set(case) for case in CASES)
    assert len(CASES) == 8


@pytest.mark.parametrize("case", [c for c in CASES if "rdp_epsilon" in c], ids=_case_id)
def test_rdp_reference(case):
    orders = TF_PRIVACY_ORDERS if "orders" in case["source"] else None
    report = compute_epsilon(_segment(case), case["delta"], accountants=("rdp",), rdp_orders=orders)
    assert _close(report.rdp.epsilon, case["rdp_epsilon"], case), report.rdp
    if "rdp_order" in case:
        assert report.rdp.details["order"] == case["rdp_order"]


@pytest.mark.parametrize("case", [c for c in CASES if "pld_epsilon" in c], ids=_case_id)
def test_pld_reference(case):
    report = compute_epsilon(_segment(case), case["delta"], accountants=("pld",))
    assert _close(report.pld.epsilon, case["pld_epsilon"], case), report.pld


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.slow) if _segment(c).steps > 10_000 else c
        for c in CASES
        if "prv_upper" in c
    ],
    ids=_case_id,
)
def test_prv_reference(case):
    # Opacus table: eps_error 0.01, delta_error 1e-9 (= δ/1000, our default).
    report = compute_epsilon(_segment(case), case["delta"], accountants=("prv",))
    assert report.prv.details["delta_error"] == pytest.approx(1e-9)
    assert _close(report.prv.details["upper"], case["prv_upper"], case), report.prv
    assert report.prv.epsilon == report.prv.details["upper"]
