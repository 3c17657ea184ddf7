"""End to end through the auditor: what the audit of a recorded Opacus run says."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from audits import run_audit  # noqa: E402


def _audit(run_dir):
    return run_audit(run_dir)


def test_shuffled_opacus_run_is_refuted_naming_shuffled_batches(opacus_run, tmp_path):
    rec = opacus_run(tmp_path / "run", poisson=False, steps=54, batch_size=100, checkpoint_every=None)
    cert = _audit(rec.run_dir)
    assert cert.verdict == "refuted", cert.summary_text()
    assert "shuffl" in cert.verdict_reason, cert.verdict_reason
