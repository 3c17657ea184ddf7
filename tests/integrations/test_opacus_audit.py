"""End to end through the auditor: recorded Opacus runs are certified with replay, broken ones refuted."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus.optimizers import DPOptimizer  # noqa: E402

from audits import run_audit  # noqa: E402


class NoNoise(DPOptimizer):
    """A broken step: noise is not added."""

    def add_noise(self):
        for p in self.params:
            p.grad = p.summed_grad.view_as(p).clone()


class NoClipping(DPOptimizer):
    """A broken step: per-example gradients are summed without clipping."""

    def clip_and_accumulate(self):
        for p in self.params:
            p.summed_grad = self._get_flat_grad_sample(p).sum(dim=0)


def _audit(run_dir):
    return run_audit(run_dir)


def test_recorded_opacus_run_is_certified_with_replay(opacus_run, tmp_path):
    # batch 100: Opacus's q = 1/18 and its denominator int(q·N) = 99 (q·N = 99.8).
    rec = opacus_run(tmp_path / "run", steps=30, batch_size=100)
    cert = _audit(rec.run_dir)
    checks = {c.name: c for c in cert.checks}
    assert cert.verdict == "certified", cert.summary_text()
    assert checks["replay"].status == "pass", checks["replay"].reason


@pytest.mark.parametrize(
    ("broken", "diagnosis"),
    [(NoNoise, "noise was not added"), (NoClipping, "not clipped")],
    ids=["no-noise", "no-clipping"],
)
def test_broken_opacus_steps_are_refuted_by_replay(opacus_run, tmp_path, broken, diagnosis):
    rec = opacus_run(tmp_path / "run", steps=20, batch_size=100, optimizer_class=broken)
    cert = _audit(rec.run_dir)
    checks = {c.name: c for c in cert.checks}
    assert cert.verdict == "refuted", cert.summary_text()
    assert checks["replay"].status == "fail", checks["replay"].reason
    assert diagnosis in checks["replay"].reason


def test_shuffled_opacus_run_is_refuted_naming_shuffled_batches(opacus_run, tmp_path):
    rec = opacus_run(tmp_path / "run", poisson=False, steps=54, batch_size=100, checkpoint_every=None)
    cert = _audit(rec.run_dir)
    assert cert.verdict == "refuted", cert.summary_text()
    assert "shuffl" in cert.verdict_reason, cert.verdict_reason
