"""check_claim: tight reference (PLD, else PRV upper), RDP only as an upper bound."""

import math

import pytest

from dpverify.accounting import AccountantResult, EpsilonReport, check_claim


def _report(rdp=None, pld=None, prv=None, lower=None, sampler="poisson"):
    def res(name, eps, **details):
        return AccountantResult(
            name=name, epsilon=eps, reason=None if eps is not None else "n/a", details=details
        )

    prv_details = (
        {} if prv is None else {"lower": prv - 0.01, "estimate": prv - 0.005, "upper": prv}
    )
    return EpsilonReport(
        rdp=res("rdp", rdp, order=8.0),
        pld=res("pld", pld),
        prv=AccountantResult(
            name="prv", epsilon=prv, reason=None if prv else "n/a", details=prv_details
        ),
        delta=1e-5,
        steps=100,
        sampler=sampler,
        lower_bound=lower,
    )


def test_claim_at_or_above_pld_holds_below_fails():
    r = _report(rdp=2.6, pld=2.3818, prv=2.3917)
    assert check_claim(r, 2.3818).holds
    assert check_claim(r, 2.381).holds  # within tolerance (0.1% of ε)
    res = check_claim(r, 2.2)
    assert not res.holds and res.reference == "pld" and res.reference_epsilon == 2.3818
    assert "2.2" in res.reason and res.verifiable


def test_prv_upper_is_the_reference_without_pld():
    r = _report(rdp=2.6, prv=2.39)
    assert check_claim(r, 2.39).holds
    res = check_claim(r, 2.30)
    assert not res.holds and res.reference == "prv"


def test_rdp_never_refutes_but_confirms_above():
    r = _report(rdp=1.5)
    assert check_claim(r, 1.6).holds and check_claim(r, 1.6).reference == "rdp"
    res = check_claim(r, 1.4)
    assert not res.holds and not res.verifiable
    # with a tight accountant, a claim between PLD and RDP holds
    assert check_claim(_report(rdp=1.5, pld=1.2), 1.3).holds


def test_shuffle_claims_are_unverifiable_or_refuted_by_the_lower_bound():
    r = _report(lower=5.2, sampler="shuffle")
    below = check_claim(r, 0.31)
    assert not below.holds and below.verifiable and below.reference == "shuffle_lower_bound"
    above = check_claim(r, 6.0)
    assert not above.holds and not above.verifiable
    nothing = check_claim(_report(sampler="balls_in_bins"), 1.0)
    assert nothing.reference == "none" and math.isnan(nothing.reference_epsilon)


def test_tolerance_is_explicit():
    r = _report(pld=1.0)
    assert not check_claim(r, 0.99).holds
    assert check_claim(r, 0.99, tolerance=0.02).holds
    with pytest.raises(ValueError, match="tolerance"):
        check_claim(r, 1.0, tolerance=-1)
