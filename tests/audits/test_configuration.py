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
        ({"expected_batch_size": 25.0}, "differs from q·N = 20"),
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
