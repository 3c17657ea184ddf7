"""The replay seam: an Opacus run is replayed by the auditor through its framework's replayer."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("opacus")


def test_audit_replays_an_opacus_run_through_the_seam(opacus_run, tmp_path):
    from audits import run_audit

    rec = opacus_run(tmp_path / "run", steps=24)
    cert = run_audit(rec.run_dir, replay_steps=10, replay_seed=0)
    replay = cert.check("replay")
    assert replay.details.get("framework") == "opacus", replay.reason
    assert replay.status == "pass", replay.reason
    assert replay.details["includes_final_parameters"] is True
    assert cert.verified("replay")
