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


def _bracketed(rdp, prv_lower, prv_estimate, prv_upper):
    return EpsilonReport(
        rdp=AccountantResult(name="rdp", epsilon=rdp),
        pld=AccountantResult(name="pld", epsilon=prv_upper + 0.02),
        prv=AccountantResult(
            name="prv",
            epsilon=prv_upper,
            details={"lower": prv_lower, "estimate": prv_estimate, "upper": prv_upper},
        ),
        delta=1e-5,
        steps=1000,
        rounding="1000 distinct (q, σ) pairs bracketed by 32 groups",
    )


def test_a_claim_at_any_valid_upper_bound_holds_even_when_pld_is_far_above():
    """q = 1e-7, T = 1e6, δ = 1e-12: PLD 9.35 while RDP bounds ε by 3.49 and PRV's upper is 0.27."""
    r = _report(rdp=3.49, pld=9.35, prv=0.27)
    assert r.disagreements and "PLD ε = 9.35 exceeds" in r.disagreements[0]
    assert r.tight_name == "prv"  # PLD is set aside
    assert r.to_json()["disagreements"] == list(r.disagreements)  # in the certificate
    for claim in (0.27, 1.0, 3.49, 9.0):
        res = check_claim(r, claim)
        assert res.holds, res
    assert check_claim(r, 0.27).reference == "prv"
    low = check_claim(r, 0.2)  # below PRV's estimate (and lower bound): refuted
    assert not low.holds and low.verifiable and low.reference == "prv"


def test_bracketed_runs_refute_only_below_the_lower_bracket():
    r = _bracketed(rdp=1.95, prv_lower=1.78, prv_estimate=1.81, prv_upper=1.83)
    assert r.tight is None and r.lower == 1.78 and r.upper == 1.83
    assert check_claim(r, 1.83).holds
    between = check_claim(r, 1.80)
    assert not between.holds and not between.verifiable
    assert "bracketed" in between.reason and "1.78" in between.reason
    below = check_claim(r, 1.7)
    assert not below.holds and below.verifiable and "lower bound 1.78" in below.reason


def test_unavailable_tight_accountants_leave_rdp_to_confirm():
    r = _report(rdp=2.0)
    assert check_claim(r, 2.0).holds
    assert not check_claim(r, 1.9).verifiable
