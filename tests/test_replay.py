"""dpverify.replay: a ledger cut into checkpoint segments (no JAX needed)."""

from __future__ import annotations

from dpverify.replay import checkpoint_segments, covered_steps


def test_plain_run_is_cut_at_every_checkpoint(tmp_path, plan_ledger):
    plan = [("ck", 0), 0, 1, ("ck", 2), 2, 3, ("ck", 4), 4, ("ck", 5)]
    segments, notes = checkpoint_segments(plan_ledger(tmp_path / "l", plan))
    assert [(s.start, s.end) for s in segments] == [(0, 2), (2, 4), (4, 5)]
    assert [s.final for s in segments] == [False, False, True]
    assert [[r.step for r in s.steps] for s in segments] == [[0, 1], [2, 3], [4]]
    assert not any(s.touches_resume for s in segments) and notes == []
    assert covered_steps(segments) == 5
    start, end = segments[0]  # unpacks as (start, end) for simple replayers
    assert (start, end) == (0, 2) and segments[0].start_digest == "d0"


def test_resume_marks_both_sides_and_orphans_are_noted(tmp_path, plan_ledger):
    # Checkpoint 2, then steps 2, 3 (killed before checkpoint 4), resume from 2.
    plan = [("ck", 0), 0, 1, ("ck", 2), 2, 3, ("resume", 2), 2, 3, ("ck", 4), 4, 5, ("ck", 6)]
    segments, notes = checkpoint_segments(plan_ledger(tmp_path / "l", plan))
    assert [(s.start, s.end) for s in segments] == [(0, 2), (2, 4), (4, 6)]
    assert segments[0].before_resume and not segments[0].after_resume
    assert segments[1].after_resume and segments[1].touches_resume
    assert not segments[2].touches_resume and segments[2].final
    assert any("2 executed step(s) lie in no checkpoint segment" in n for n in notes)


def test_steps_after_the_last_checkpoint_leave_no_final_segment(tmp_path, plan_ledger):
    plan = [("ck", 0), 0, 1, ("ck", 2), 2]
    segments, notes = checkpoint_segments(plan_ledger(tmp_path / "l", plan))
    assert [(s.start, s.end, s.final) for s in segments] == [(0, 2, False)]
    assert notes
