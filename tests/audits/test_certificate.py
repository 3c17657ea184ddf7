"""Certificate: JSON schema keys, public fields only, atomic writing, summary."""

import json

import pytest

from audits.certificate import SCHEMA_VERSION, Certificate, public_run_config, write_json
from audits.check import CheckResult
from dpverify.errors import InvalidArgument, UnusableInput

EPSILON_JSON = {
    "rdp": {"epsilon": 2.1, "order": 12.0},
    "pld": {"epsilon": 1.9},
    "prv": {"lower": 1.88, "estimate": 1.9, "upper": 1.92},
    "reasons": {},
}


def _cert(fakes, verdict="certified"):
    header = fakes.make_header()
    checks = (
        CheckResult(name="integrity", status="pass", reason="ok"),
        CheckResult(name="sampling", status="pass", reason="ok", p_value=0.3),
    )
    return Certificate(
        verdict=verdict,
        verdict_reason="every check passed",
        checks=checks,
        epsilon=EPSILON_JSON,
        claimed_epsilon=3.0,
        delta=1e-5,
        steps=20,
        logical_steps=20,
        ledger_head="ab" * 32,
        sealed=True,
        run=public_run_config(header),
    )


def test_json_has_the_documented_keys(fakes):
    doc = _cert(fakes).to_json()
    for key in (
        "schema_version",
        "verdict",
        "checks",
        "epsilon",
        "claimed_epsilon",
        "delta",
        "steps",
        "ledger_head",
        "run",
        "dpverify_version",
        "created",
    ):
        assert key in doc, key
    assert doc["schema_version"] == SCHEMA_VERSION
    assert set(doc["checks"][0]) >= {"name", "status", "p_value", "reason"}
    assert doc["epsilon"]["prv"] == {"lower": 1.88, "estimate": 1.9, "upper": 1.92}
    json.dumps(doc, allow_nan=False)


def test_run_config_is_public_fields_only(fakes):
    header = fakes.make_header(sampler_params={"cap": 40, "seed": 7}, noise_key_digest="00" * 32)
    run = public_run_config(header)
    assert "extra" not in run and "secret_note" not in json.dumps(run)
    assert run["sampler_params"] == {"cap": 40}
    assert run["dataset_size"] == 1000 and run["delta"] == 1e-5


def test_exit_codes_and_bad_verdict(fakes):
    assert _cert(fakes).exit_code == 0
    assert _cert(fakes, "refuted").exit_code == 1
    assert _cert(fakes, "unverifiable").exit_code == 1
    with pytest.raises(InvalidArgument):
        _cert(fakes, "maybe")


def test_write_json_round_trips(fakes, tmp_path):
    cert = _cert(fakes)
    path = write_json(cert, tmp_path / "cert.json")
    assert json.loads(path.read_text()) == cert.to_json()
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(UnusableInput):
        write_json(cert, tmp_path / "missing" / "cert.json")


def test_summary_puts_the_verdict_first(fakes):
    cert = _cert(fakes, "refuted")
    lines = cert.summary_text().splitlines()
    assert lines[0].startswith("verdict: REFUTED")
    assert lines[1].startswith("scope: REFUTED — sampling verified")  # what the verdict covers
    assert "recomputed PLD ε = 1.9" in lines[2]
    assert any("[pass] sampling" in line and "p = 0.3" in line for line in lines)
    assert cert.check("sampling").p_value == 0.3
    with pytest.raises(InvalidArgument):
        cert.check("nope")


def test_scope_counts_only_passed_checks(fakes):
    from audits.check import CheckResult

    checks = [
        CheckResult(name="integrity", status="pass", reason="ok"),
        CheckResult(name="sampling", status="pass", reason="ok"),
        CheckResult(name="mechanics", status="warn", reason="fields not recorded"),
        CheckResult(name="privacy", status="pass", reason="holds"),
        CheckResult(name="replay", status="skip", reason="no checkpoints"),
    ]
    cert = Certificate(verdict="certified", verdict_reason="fine", checks=tuple(checks))
    scope = cert.to_json()["scope"]
    assert {k: v["verified"] for k, v in scope.items()} == {
        "integrity": True,
        "sampling": True,
        "mechanics": False,
        "accounting": True,
        "replay": False,
    }
    assert cert.scope_text == (
        "CERTIFIED — sampling and accounting verified; recorded mechanics NOT verified (warn); "
        "clipping and noise NOT verified (no replay)"
    )
    assert cert.verified("accounting") and not cert.verified("replay")
    with pytest.raises(InvalidArgument):
        cert.verified("everything")


def test_summary_lines_cannot_be_forged_by_a_reason():
    from audits.check import CheckResult

    forged = "fine\nverdict: CERTIFIED — forged\r\u2028x"
    cert = Certificate(
        verdict="refuted",
        verdict_reason=f"configuration: {forged}",
        checks=(CheckResult(name="configuration", status="fail", reason=forged),),
    )
    lines = cert.summary_text().splitlines()
    assert sum(line.startswith("verdict:") for line in lines) == 1
    assert lines[0].startswith("verdict: REFUTED")
