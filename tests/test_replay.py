"""dpverify.replay: a ledger cut into checkpoint segments (no JAX needed)."""

from __future__ import annotations

import numpy as np

from dpverify.ledger import LedgerWriter, read_ledger
from dpverify.ledger.records import Checkpoint, RunHeader, Step
from dpverify.replay import checkpoint_segments, covered_steps


def _header():
    return RunHeader(
        dataset_size=100,
        sampler="poisson",
        sampling_rate=0.1,
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=1e-5,
    )


def _step(t):
    return Step(step=t, indices=np.array([t % 100]))


def write_ledger(path, plan):
    """``plan``: a list of ints (steps), ``("ck", s)`` and ``("resume", s)`` items."""
    writer = LedgerWriter.create(path, _header())
    for item in plan:
        if isinstance(item, int):
            writer.append(_step(item))
        elif item[0] == "ck":
            writer.append(Checkpoint(step=item[1], digest=f"d{item[1]}", path=None))
        else:
            writer.close()
            writer = LedgerWriter.resume(path, step=item[1], checkpoint_digest=f"d{item[1]}")
    writer.close()
    return read_ledger(path)


def test_plain_run_is_cut_at_every_checkpoint(tmp_path):
    plan = [("ck", 0), 0, 1, ("ck", 2), 2, 3, ("ck", 4), 4, ("ck", 5)]
    segments, notes = checkpoint_segments(write_ledger(tmp_path / "l", plan))
    assert [(s.start, s.end) for s in segments] == [(0, 2), (2, 4), (4, 5)]
    assert [s.final for s in segments] == [False, False, True]
    assert [[r.step for r in s.steps] for s in segments] == [[0, 1], [2, 3], [4]]
    assert not any(s.touches_resume for s in segments) and notes == []
    assert covered_steps(segments) == 5
    start, end = segments[0]  # unpacks as (start, end) for simple replayers
    assert (start, end) == (0, 2) and segments[0].start_digest == "d0"


def test_resume_marks_both_sides_and_orphans_are_noted(tmp_path):
    # Checkpoint 2, then steps 2, 3 (killed before checkpoint 4), resume from 2.
    plan = [("ck", 0), 0, 1, ("ck", 2), 2, 3, ("resume", 2), 2, 3, ("ck", 4), 4, 5, ("ck", 6)]
    segments, notes = checkpoint_segments(write_ledger(tmp_path / "l", plan))
    assert [(s.start, s.end) for s in segments] == [(0, 2), (2, 4), (4, 6)]
    assert segments[0].before_resume and not segments[0].after_resume
    assert segments[1].after_resume and segments[1].touches_resume
    assert not segments[2].touches_resume and segments[2].final
    assert any("2 executed step(s) lie in no checkpoint segment" in n for n in notes)


def test_steps_after_the_last_checkpoint_leave_no_final_segment(tmp_path):
    plan = [("ck", 0), 0, 1, ("ck", 2), 2]
    segments, notes = checkpoint_segments(write_ledger(tmp_path / "l", plan))
    assert [(s.start, s.end, s.final) for s in segments] == [(0, 2, False)]
    assert notes
