"""Replay check: skips with reasons, names the first mismatching step (stubbed replay).

Real replays of trained runs are in test_mutations.py.
"""

import pytest

from audits.replay import check_replay
from dpverify.errors import UnusableInput
from trainers.replay import ReplayOutcome, ReplayReport


def _outcome(step, rel, ok=True, reason=""):
    return ReplayOutcome(
        step=step,
        max_abs_deviation=rel,
        max_rel_deviation=rel,
        tolerance=1e-5,
        ok=ok,
        reason=reason,
    )


@pytest.fixture
def stub(monkeypatch):
    def install(result):
        def fake(run_dir, **kwargs):
            if isinstance(result, Exception):
                raise result
            return result

        monkeypatch.setattr("trainers.replay.replay_steps", fake)

    return install


def test_disabled_and_bare_ledger_are_skipped(tmp_path):
    assert check_replay(tmp_path, sample=None).reason == "replay was not requested"
    r = check_replay(None, sample=5)
    assert r.status == "skip" and "without its run directory" in r.reason


def test_skipped_reason_is_passed_through(stub, tmp_path):
    stub(ReplayReport(outcomes=(), skipped_reason="no checkpoint files to replay from"))
    r = check_replay(tmp_path)
    assert r.status == "skip" and r.reason == "no checkpoint files to replay from"


def test_replay_errors_become_skips(stub, tmp_path):
    stub(UnusableInput("x is not a run directory"))
    r = check_replay(tmp_path)
    assert r.status == "skip" and "replay cannot run: x is not a run directory" in r.reason


def test_matching_steps_pass(stub, tmp_path):
    stub(ReplayReport(outcomes=(_outcome(1, 1e-7), _outcome(4, 3e-7))))
    r = check_replay(tmp_path)
    assert r.status == "pass" and "2 replayed steps match" in r.reason
    assert r.details["replayed"] == [1, 4]


def test_mismatch_names_step_and_deviation(stub, tmp_path):
    bad = _outcome(4, 0.2, ok=False)
    stub(ReplayReport(outcomes=(_outcome(1, 1e-7), bad)))
    r = check_replay(tmp_path)
    assert r.status == "fail"
    assert "at 1 of 2 replayed steps; step 4 deviates by 0.2 of its scale" in r.reason
