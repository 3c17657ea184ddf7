"""Human report: verdict first, every check, plots, and no indices."""

import re

import numpy as np
import pytest

from audits import runner
from audits.check import CheckResult
from audits.evidence import collect_evidence
from audits.report import write_report
from audits.sampling import last_executions
from dpverify.errors import InvalidArgument


@pytest.fixture
def cert(monkeypatch, fakes):
    def make(name):
        return CheckResult(name=name, status="pass", reason=f"{name} fine | ok")

    monkeypatch.setattr(runner, "check_configuration", lambda h, **k: make("configuration"))
    monkeypatch.setattr(runner, "check_sampling", lambda ledger, **k: make("sampling"))
    monkeypatch.setattr(runner, "check_privacy", lambda ledger: (make("privacy"), None))
    monkeypatch.setattr(runner, "check_replay", lambda d, **k: make("replay"))
    ledger = fakes.make_ledger(30)
    return runner.audit_ledger(ledger, verify_report=fakes.verify_for(ledger))


def test_evidence_is_aggregate(fakes):
    ledger = fakes.make_ledger(30)
    ev = collect_evidence(ledger, steps=last_executions(ledger.steps), delta=1e-5)
    assert ev.batch_sizes.tolist() == [s.batch_size for s in ledger.steps]
    assert ev.count_histogram.sum() == 1000
    assert (np.arange(ev.count_histogram.size) * ev.count_histogram).sum() == ev.batch_sizes.sum()


def test_markdown_report_has_verdict_first_checks_and_plots(cert, tmp_path):
    path = write_report(cert, tmp_path / "report.md", epsilon_points=2)
    text = path.read_text()
    assert text.splitlines()[2].startswith("**Verdict: CERTIFIED**")
    for name in ("integrity", "configuration", "sampling", "mechanics", "privacy", "replay"):
        assert f"| {name} |" in text
    assert "fine \\| ok" in text
    plots = sorted(p.name for p in (tmp_path / "report_plots").iterdir())
    assert plots == ["batch_sizes.png", "epsilon.png", "inclusion_counts.png"]
    assert (tmp_path / "report_plots" / "batch_sizes.png").read_bytes()[:4] == b"\x89PNG"
    assert "secret_note" not in text


def test_html_report_is_self_contained(cert, tmp_path):
    text = write_report(cert, tmp_path / "r.html", epsilon_points=1).read_text()
    assert text.startswith("<!DOCTYPE html>") and "Verdict: CERTIFIED" in text
    assert text.count("data:image/png;base64,") == 3
    assert not (tmp_path / "r_plots").exists()


def test_report_and_json_never_contain_indices(monkeypatch, fakes, tmp_path):
    import json

    header = fakes.make_header(dataset_size=10**6, sampling_rate=1e-4)
    ledger = fakes.make_ledger(5, header=header)
    big = {str(int(i)) for s in ledger.steps for i in s.indices if i >= 100_000}
    assert len(big) > 200
    monkeypatch.setattr(
        runner, "check_replay", lambda d, **k: CheckResult(name="replay", status="skip", reason="r")
    )
    monkeypatch.setattr(
        runner,
        "check_sampling",
        lambda ledger, **k: CheckResult(name="sampling", status="skip", reason="r"),
    )
    monkeypatch.setattr(
        runner,
        "check_privacy",
        lambda ledger: (CheckResult(name="privacy", status="skip", reason="r"), None),
    )
    cert = runner.audit_ledger(ledger, verify_report=fakes.verify_for(ledger))
    texts = [
        write_report(cert, tmp_path / "r.md", epsilon_points=0).read_text(),
        json.dumps(cert.to_json()),
        cert.summary_text(),
    ]
    for text in texts:
        numbers = set(re.findall(r"\d{6}", text))
        assert not numbers & big


def test_bad_suffix_is_refused(cert, tmp_path):
    with pytest.raises(InvalidArgument):
        write_report(cert, tmp_path / "r.pdf")


def _integers(text: str) -> set[str]:
    """Whole decimal integers (integer parts of numbers), not digit runs inside hex hashes."""
    return set(re.findall(r"(?<![0-9a-fA-F.])\d+(?![0-9a-fA-F])", text))


@pytest.mark.parametrize("sampler", ["poisson", "fixed_size"])
def test_real_audit_of_a_written_ledger_never_shows_indices(tmp_path, sampler):
    """End to end with every real check (no stubs), passing and failing sampling alike.

    Deterministic (fixed seed); the grep looks for every index >= 100 000 of the ledger
    as a whole number in the JSON, the summary and the Markdown report.
    """
    import json

    from audits import run_audit
    from dpverify.ledger import LedgerWriter
    from dpverify.ledger.records import RunHeader, Seal, Step
    from dpverify.samplers import make_sampler

    n, q, steps = 400_000, 5e-4, 30
    header = RunHeader(
        dataset_size=n,
        sampler="poisson",
        sampling_rate=q,
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=1e-7,
        claimed_epsilon=50.0,
    )
    draw = make_sampler(sampler, n, q, 3)
    big: set[str] = set()
    with LedgerWriter.create(tmp_path / "ledger", header) as writer:
        for t in range(steps):
            idx = draw.sample(t)
            big |= {str(int(i)) for i in idx if i >= 100_000}
            writer.append(
                Step(
                    step=t,
                    indices=idx,
                    noise_std=1.0,
                    noise_draws=1,
                    num_clipped=0,
                    max_grad_norm=0.5,
                    max_clipped_norm=0.5,
                    denominator=q * n,
                    physical_batches=2,
                )
            )
        writer.close(seal=Seal(steps_executed=steps, final_step=steps))
    assert len(big) > 4000
    cert = run_audit(tmp_path / "ledger", replay_steps=None)
    assert cert.check("sampling").status == ("pass" if sampler == "poisson" else "fail")
    texts = [
        json.dumps(cert.to_json()),
        cert.summary_text(),
        write_report(cert, tmp_path / "r.md", epsilon_points=1).read_text(),
    ]
    for text in texts:
        assert not _integers(text) & big
    assert str(steps) in _integers(texts[0])  # the matcher does find whole numbers
