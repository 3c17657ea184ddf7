"""Configuration check: sampler vs parameters, q·N vs denominator, δ vs 1/N."""

import pytest

from audits.configuration import check_configuration


def test_consistent_header_passes(fakes):
    r = check_configuration(fakes.make_header(), claimed_epsilon=3.0)
    assert r.status == "pass", r.reason


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"sampler": "magic"}, "sampler 'magic' is unknown"),
        ({"sampler": "truncated_poisson"}, "must declare an integer cap"),
        ({"sampler": "truncated_poisson", "sampler_params": {"cap": 2.5}}, "integer cap"),
        ({"sampler_params": {"cap": 30}}, "declared as 'truncated_poisson'"),
        ({"sampler": "cyclic_poisson"}, "integer cycle_length >= 1"),
    ],
)
def test_inconsistent_headers_fail(fakes, overrides, words):
    r = check_configuration(fakes.make_header(**overrides), claimed_epsilon=3.0)
    assert r.status == "fail" and words in r.reason, r.reason


def test_declared_cap_and_rounded_batch_size_pass(fakes):
    header = fakes.make_header(
        sampler="truncated_poisson", sampler_params={"cap": 40}, expected_batch_size=20.1
    )
    assert check_configuration(header, claimed_epsilon=1.0).status == "pass"


def test_delta_not_below_one_over_n_and_missing_claim_warn(fakes):
    r = check_configuration(fakes.make_header(delta=0.01), claimed_epsilon=1.0)
    assert r.status == "warn" and "not below 1/N" in r.reason
    r = check_configuration(fakes.make_header(), claimed_epsilon=None)
    assert r.status == "warn" and "claims no ε" in r.reason


def test_an_expected_batch_size_other_than_qn_warns_with_the_right_diagnosis(fakes):
    """Opacus's own expected batch size int(q·N) is a public constant, not a wrong q."""
    header = fakes.make_header(dataset_size=1000, sampling_rate=0.0255, expected_batch_size=25.0)
    r = check_configuration(header, claimed_epsilon=3.0)
    assert r.status == "warn", r.reason
    assert "int(q·N) = 25, Opacus's convention" in r.reason and "rescales" in r.reason
    assert "does not match" not in r.reason
    r = check_configuration(fakes.make_header(expected_batch_size=25.0), claimed_epsilon=3.0)
    assert r.status == "warn" and "differs from q·N = 20" in r.reason


def test_the_claimed_delta_is_checked_not_the_headers(fakes):
    """A seal may claim at another δ than the header's: that δ is the one judged."""
    header = fakes.make_header(delta=1e-5)
    assert check_configuration(header, claimed_epsilon=0.0, delta=1e-5).status == "pass"
    r = check_configuration(header, claimed_epsilon=0.0, delta=0.5)
    assert r.status == "warn" and "claimed δ = 0.5 is not below 1/N" in r.reason
    assert r.details["delta"] == 0.5
