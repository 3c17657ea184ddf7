"""Replay check: which segments are replayed, coverage, skips and failures (stubbed replayer).

Real replays of trained runs are in tests/trainers/test_replay.py and
tests/audits/test_mutations.py.
"""

from __future__ import annotations

import sys
import types

import pytest

from audits import replay as audit_replay
from audits.replay import check_replay, choose_segments
from dpverify.replay import SegmentOutcome, SegmentReplay, checkpoint_segments

PLAN = [("ck", 0), *range(0, 4), ("ck", 4), *range(4, 8), ("ck", 8)]
PLAN += [*range(8, 12), ("ck", 12), *range(12, 16), ("ck", 16), *range(16, 20), ("ck", 20)]


@pytest.fixture
def ledger(tmp_path, plan_ledger):
    return plan_ledger(tmp_path / "ledger", PLAN)


@pytest.fixture
def fake_replayer(monkeypatch):
    """Register a framework 'fake' whose replayer returns what the test says."""
    calls = []

    def install(result_for):
        mod = types.ModuleType("fake_replayer")

        def replay_segments(run_dir, ledger, segments, *, noise_key_path=None):
            calls.append([(s.start, s.end) for s in segments])
            return result_for(segments)

        mod.replay_segments = replay_segments
        monkeypatch.setitem(sys.modules, "fake_replayer", mod)
        monkeypatch.setitem(audit_replay.REPLAYERS, "jax", "fake_replayer")
        return calls

    return install


def _ok(segments, rel=1e-6):
    return SegmentReplay(
        outcomes=tuple(
            SegmentOutcome(
                start=s.start,
                end=s.end,
                ok=True,
                rel_deviation=rel,
                max_abs_deviation=rel,
                tolerance=1e-4,
            )
            for s in segments
        )
    )


def test_choice_always_has_the_final_segment_and_respects_the_budget(ledger):
    segments, _ = checkpoint_segments(ledger)
    for seed in range(20):
        chosen = choose_segments(segments, 8, seed)
        assert chosen[-1].final and sum(s.num_steps for s in chosen) == 8
    picks = {
        tuple((s.start, s.end) for s in choose_segments(segments, 8, seed)) for seed in range(20)
    }
    assert len(picks) > 1  # the auditor's seed decides; the trainer cannot predict it
    same = [(s.start, s.end) for s in choose_segments(segments, 8, 3)]
    assert same == [(s.start, s.end) for s in choose_segments(segments, 8, 3)]
    # A budget smaller than one segment still replays the final one.
    assert [(s.start, s.end) for s in choose_segments(segments, 1, 0)] == [(16, 20)]
    assert len(choose_segments(segments, 1000, 0)) == 5


def test_resume_segments_are_always_replayed(tmp_path, plan_ledger):
    plan = [("ck", 0), 0, 1, ("ck", 2), 2, 3, ("ck", 4), 4, ("resume", 4), 4, 5, ("ck", 6)]
    plan += [6, 7, ("ck", 8), 8, 9, ("ck", 10)]
    segments, _ = checkpoint_segments(plan_ledger(tmp_path / "l", plan))
    for seed in range(10):
        chosen = {(s.start, s.end) for s in choose_segments(segments, 1, seed)}
        assert {(2, 4), (4, 6), (8, 10)} <= chosen


def test_coverage_is_stated_and_passes(ledger, tmp_path, fake_replayer):
    calls = fake_replayer(_ok)
    r = check_replay(tmp_path, ledger=ledger, budget=8, seed=5)
    assert r.status == "pass", r.reason
    assert "replayed 8 of 20 steps in 2 segments, including the final parameters" in r.reason
    assert "auditor's seed 5" in r.reason
    assert r.details["includes_final_parameters"] is True and r.details["seed"] == 5
    assert calls[-1][-1] == (16, 20)


def test_a_fresh_seed_is_drawn_and_reported(ledger, tmp_path, fake_replayer):
    fake_replayer(_ok)
    seeds = {check_replay(tmp_path, ledger=ledger, budget=8).details["seed"] for _ in range(3)}
    assert len(seeds) > 1


def test_mismatch_names_segment_and_diagnosis(ledger, tmp_path, fake_replayer):
    def result(segments):
        out = list(_ok(segments).outcomes)
        out[-1] = SegmentOutcome(
            start=16,
            end=20,
            ok=False,
            rel_deviation=0.7,
            max_abs_deviation=0.03,
            tolerance=1e-4,
            reason="steps 16–19: the released checkpoint 20 differs",
            diagnosis="noise not applied to the update?",
        )
        return SegmentReplay(outcomes=tuple(out))

    fake_replayer(result)
    r = check_replay(tmp_path, ledger=ledger, budget=8, seed=0)
    assert r.status == "fail"
    assert "do not match the reference in 1 of 2 replayed segments" in r.reason
    assert "noise not applied to the update?" in r.reason and "steps 16–19" in r.reason
    assert r.details["diagnosis"] == "noise not applied to the update?"


def test_skips_never_refute(ledger, tmp_path, fake_replayer, monkeypatch):
    fake_replayer(lambda s: SegmentReplay(skipped_reason="no noise key at k"))
    r = check_replay(tmp_path, ledger=ledger, budget=8, seed=0)
    assert r.status == "skip" and r.reason == "no noise key at k"
    assert check_replay(tmp_path, ledger=ledger, budget=None).reason == "replay was not requested"
    assert "without its run directory" in check_replay(None, ledger=ledger).reason
    # An unknown framework is skipped, with the frameworks that are known.
    import dataclasses

    header = dataclasses.replace(ledger.header, extra={"framework": "mxnet"})
    odd = types.SimpleNamespace(header=header, records=ledger.records, steps=ledger.steps)
    r = check_replay(tmp_path, ledger=odd, budget=8, seed=0)
    assert r.status == "skip" and "no segment replayer for framework 'mxnet'" in r.reason


def test_final_parameters_not_checkpointed_is_a_warning(tmp_path, fake_replayer, plan_ledger):
    led = plan_ledger(tmp_path / "l", [("ck", 0), 0, 1, ("ck", 2), 2])
    fake_replayer(_ok)
    r = check_replay(tmp_path, ledger=led, budget=8, seed=0)
    assert r.status == "warn" and "NOT including the final parameters" in r.reason


def test_no_segments_is_a_skip(tmp_path, fake_replayer, plan_ledger):
    led = plan_ledger(tmp_path / "l", [0, 1, 2])
    fake_replayer(_ok)
    r = check_replay(tmp_path, ledger=led, budget=8, seed=0)
    assert r.status == "skip" and "no checkpoint segments" in r.reason
