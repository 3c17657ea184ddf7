"""Kill-and-resume: a run killed with SIGKILL and resumed loses no step and double-counts none."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from audits import run_audit
from dpverify.cli import main
from dpverify.errors import InvalidArgument, UnusableInput
from dpverify.ledger import Checkpoint, Step, read_ledger
from trainers.loop import TrainConfig, train

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("trainers.test_resume")

STEPS = 260
# > the writer's group commit (64 records): steps after a checkpoint become durable
# before the next checkpoint, so the kill usually leaves steps that must be repeated.
EVERY = 100

ARGS = [
    "--task", "digits-mlp", "--expected-batch-size", "40", "--noise-multiplier", "1.0",
    "--physical-batch-size", "16", "--steps", str(STEPS), "--checkpoint-every", str(EVERY),
    "--seed", "11", "--quiet",
]  # fmt: skip


# The trainer pauses (blocks on its stdin) before recording step PAUSE_AT: by
# then the group commit of steps EVERY .. EVERY + 63 has been handed to the
# writer's sync thread, and the run cannot finish before the kill — no race.
PAUSE_AT = EVERY + 80

_CHILD = """
import sys
import trainers.loop as loop
from dpverify.cli import main

pause_at, argv = int(sys.argv[1]), sys.argv[2:]
step_record = loop._step_record

def hooked(t, *a, **k):
    if t == pause_at:
        print("PAUSE", flush=True)
        sys.stdin.readline()
    return step_record(t, *a, **k)

loop._step_record = hooked
raise SystemExit(main(argv))
"""


def _start(out: Path) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(PAUSE_AT), "train", "--out", str(out), *ARGS],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _durable_steps(out: Path) -> int:
    try:
        return len(read_ledger(out / "ledger").steps)
    except Exception:  # not created yet
        return 0


def _kill_between_checkpoints(proc: subprocess.Popen, out: Path) -> None:
    """SIGKILL at the pause, once the group commit after checkpoint EVERY is durable."""
    line = proc.stdout.readline()
    if line.strip() != b"PAUSE":
        proc.kill()
        pytest.fail(f"trainer never paused: {proc.stderr.read().decode()[-2000:]}")
    # The sync thread finishes its write while the trainer waits; this only
    # bounds a hang, it races nothing (the trainer cannot move on).
    deadline = time.monotonic() + 120
    while _durable_steps(out) <= EVERY:
        assert time.monotonic() < deadline, "the group commit never became durable"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill") / "run"
    proc = _start(out)
    _kill_between_checkpoints(proc, out)
    before = read_ledger(out / "ledger")
    assert before.seal is None and EVERY < len(before.steps) <= PAUSE_AT
    killed = out.parent / "killed"
    shutil.copytree(out, killed)  # the killed run as it was, for the audit below
    summary = train(None, out, resume=True, progress=False)
    return out, before, summary, killed


def test_no_step_lost_none_double_counted(resumed):
    out, before, summary, _ = resumed
    ledger = read_ledger(out / "ledger")
    (resume,) = ledger.resumes
    i = ledger.records.index(resume)
    first = [r.step for r in ledger.records[:i] if isinstance(r, Step)]
    second = [r.step for r in ledger.records[i:] if isinstance(r, Step)]
    m = len(first)
    assert first == list(range(m)) and m == len(before.steps)
    # Resumed at the last checkpoint recorded before the kill, and re-ran from there.
    last_ckpt = [r for r in ledger.records[:i] if isinstance(r, Checkpoint)][-1]
    assert resume.step == last_ckpt.step <= m
    assert resume.checkpoint_digest == last_ckpt.digest
    assert second == list(range(resume.step, STEPS))
    # Every logical step is present; exactly the resumed range [resume.step, m) twice.
    counts = np.bincount([s.step for s in ledger.steps], minlength=STEPS)
    assert counts.min() == 1 and counts.max() <= 2
    assert np.flatnonzero(counts == 2).tolist() == list(range(resume.step, m))
    assert ledger.seal.steps_executed == len(ledger.steps) == STEPS + (m - resume.step)
    assert summary["steps_executed"] == len(ledger.steps)
    assert summary["resumed_from"] == resume.step and summary["compilations"] == 1


def test_repeats_are_identical_re_executions(resumed):
    out, _, _, _ = resumed
    ledger = read_ledger(out / "ledger")
    by_step: dict[int, list[Step]] = {}
    for s in ledger.steps:
        by_step.setdefault(s.step, []).append(s)
    for runs in by_step.values():
        if len(runs) == 2:
            a, b = runs
            assert np.array_equal(a.indices, b.indices)
            np.testing.assert_allclose(a.update_sketch, b.update_sketch, rtol=1e-5, atol=1e-7)


def test_final_claim_counts_the_repeats(resumed):
    out, _, summary, _ = resumed
    ledger = read_ledger(out / "ledger")
    repeats = len(ledger.steps) - STEPS
    assert ledger.seal.claimed_epsilon == pytest.approx(summary["claimed_epsilon"])
    if repeats > 0:
        assert ledger.seal.claimed_epsilon > ledger.header.claimed_epsilon
    else:
        assert ledger.seal.claimed_epsilon == pytest.approx(ledger.header.claimed_epsilon)


def test_replay_covers_the_resume_segments_and_passes(resumed):
    """Even with a budget of 1 step, every segment touching the resume and the final
    segment are replayed, from released checkpoints, and match the reference."""
    out, _, _, _ = resumed
    resume_step = read_ledger(out / "ledger").resumes[0].step
    cert = run_audit(out, replay_steps=1, replay_seed=0)
    replay = cert.check("replay")
    assert replay.status == "pass", replay.reason
    done = [tuple(s) for s in replay.details["segments_replayed"]]
    assert (resume_step, resume_step + EVERY) in done  # the segment after the resume
    assert done[-1][1] == STEPS and replay.details["includes_final_parameters"]
    assert "exceed the budget" in replay.reason and cert.verified("replay")


def test_the_killed_run_can_be_audited(resumed):
    # The sampling battery runs at its family-wise alpha = 1e-3 on the batches of
    # seed 11; the killed prefix's length depends on the kill time, so this can
    # fail spuriously with probability <= 1e-3 per run.  The resumed run below
    # always holds the same 260 logical batches: its outcome is deterministic.
    _, before, _, killed = resumed
    cert = run_audit(killed, replay_steps=None)
    assert cert.sealed is False
    assert cert.verdict == "certified", cert.summary_text()
    assert cert.steps == len(before.steps)


def test_the_resumed_run_is_certified_with_every_executed_step(resumed, capsys):
    out, _, _, _ = resumed
    ledger = read_ledger(out / "ledger")
    cert = run_audit(out, replay_steps=None)  # replay: the test above
    assert cert.verdict == "certified", cert.summary_text()
    assert cert.sealed is True
    assert cert.steps == len(ledger.steps) == ledger.seal.steps_executed
    assert cert.logical_steps == STEPS
    # The same through the CLI, as a user runs it: exit 0, the verdict first.
    assert main(["audit", str(out), "--no-replay", "--quiet"]) == 0
    assert main(["audit", str(out), "--no-replay"]) == 0
    assert capsys.readouterr().out.startswith("verdict: CERTIFIED")


def test_resuming_a_finished_run_changes_nothing(resumed):
    out, _, summary, _ = resumed
    head = read_ledger(out / "ledger").head
    again = train(None, out, resume=True, progress=False)
    assert again["steps_executed"] == summary["steps_executed"]
    assert read_ledger(out / "ledger").head == head


def test_resume_refuses_a_different_configuration(resumed):
    out, _, _, _ = resumed
    with pytest.raises(InvalidArgument, match="differs from the run being resumed"):
        train(TrainConfig(steps=STEPS + 1), out, resume=True, progress=False)


def test_resume_without_a_run_is_unusable(tmp_path):
    with pytest.raises(UnusableInput, match="no run to resume"):
        train(None, tmp_path / "empty", resume=True, progress=False)


def test_crash_keeps_every_step_and_resume_skips_a_damaged_checkpoint(tmp_path, monkeypatch):
    """An exception mid-run flushes every executed step (unsealed ledger); resume
    falls back past a checkpoint file whose digest no longer matches its record."""
    import trainers.dpsgd as dpsgd

    real_step = dpsgd.MaskedDPSGD.step_async  # what the loop calls

    def failing_step(self, params, opt_state, x, y, indices, noise_key, step, **kw):
        if step == 9:  # step 8 is still in flight, recorded one step behind
            raise RuntimeError("simulated crash")
        return real_step(self, params, opt_state, x, y, indices, noise_key, step, **kw)

    out = tmp_path / "crash"
    config = TrainConfig(
        task="digits-mlp", expected_batch_size=40, noise_multiplier=1.0,
        physical_batch_size=16, steps=12, checkpoint_every=5, seed=4,
    )  # fmt: skip
    monkeypatch.setattr(dpsgd.MaskedDPSGD, "step_async", failing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, out, progress=False)
    crashed = read_ledger(out / "ledger")
    assert crashed.seal is None and [s.step for s in crashed.steps] == list(range(9))
    assert [c.step for c in crashed.checkpoints] == [0, 5]
    with open(out / crashed.checkpoints[-1].path, "ab") as fh:
        fh.write(b"damage")
    monkeypatch.setattr(dpsgd.MaskedDPSGD, "step_async", real_step)
    summary = train(None, out, resume=True, progress=False)
    ledger = read_ledger(out / "ledger")
    (resume,) = ledger.resumes
    assert resume.step == 0 and resume.checkpoint_digest == crashed.checkpoints[0].digest
    assert [s.step for s in ledger.steps] == list(range(9)) + list(range(12))
    assert ledger.seal.steps_executed == summary["steps_executed"] == 21
