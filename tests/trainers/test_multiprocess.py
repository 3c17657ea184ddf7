"""Multi-process training on jax.distributed (``dpverify launch``), end to end on loopback.

Every case compares the multi-process job with a single-process run of the
same seed AND the same noise key (the key file of the job is reused through a
patched CSPRNG in this test process): the ledgers must record exactly the
same indices, and the released parameters must agree within float32
tolerance.  With σ > 0 this also proves the noise is added once per logical
step, not once per process (P·z would move the parameters by about
(P−1)·σC·lr/(qN) per step, far outside the tolerance).  Every job is audited
with replay and must be certified.

CPU is scarce: few steps, small physical batches; the 4-process and CNN cases
are marked slow (they still run in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audits import run_audit
from dpverify.ledger import Resume, read_ledger

STEPS = 4
EVERY = 2
COMMON = [
    "--expected-batch-size", "40", "--noise-multiplier", "1.0", "--clip-norm", "0.5",
    "--physical-batch-size", "16", "--steps", str(STEPS), "--checkpoint-every", str(EVERY),
    "--seed", "5", "--quiet",
]  # fmt: skip


def launch(n: int, out: Path, *extra: str, env: dict | None = None, task: str = "digits-mlp"):
    """``dpverify launch -n n -- train …`` in a subprocess; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "dpverify", "launch", "-n", str(n), "--grace", "60", "--"]
    cmd += ["train", "--task", task, "--out", str(out), *COMMON, "--json", *extra]
    full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=900)


def single_process_twin(job: Path, out: Path, monkeypatch, task: str) -> dict:
    """A single-process run with the job's seed and (patched in) the job's noise key."""
    import dpverify.private_files as private_files
    from trainers.loop import TrainConfig, train

    key = (job / "noise.key").read_bytes()
    monkeypatch.setattr(private_files.secrets, "token_bytes", lambda n: key[:n])
    config = TrainConfig(
        task=task, expected_batch_size=40, noise_multiplier=1.0, clip_norm=0.5,
        physical_batch_size=16, steps=STEPS, checkpoint_every=EVERY, seed=5,
    )  # fmt: skip
    return train(config, out, progress=False)


def load_params(path: Path):
    from flax import serialization

    raw = serialization.msgpack_restore(path.read_bytes())
    import jax

    return [np.asarray(a) for a in jax.tree_util.tree_leaves((raw["params"], raw["opt_state"]))]


def assert_same_run(job: Path, twin: Path) -> None:
    a, b = read_ledger(job / "ledger"), read_ledger(twin / "ledger")
    assert a.header.noise_key_digest == b.header.noise_key_digest
    last = {s.step: s for s in a.steps}  # the last execution of each step
    assert sorted(last) == [s.step for s in b.steps]
    for s in b.steps:
        np.testing.assert_array_equal(last[s.step].indices, s.indices)
    final = f"checkpoints/step-{STEPS:08d}.msgpack"
    for x, y in zip(load_params(job / final), load_params(twin / final), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


def check_job(n: int, task: str, tmp_path: Path, monkeypatch) -> None:
    job = tmp_path / "job"
    done = launch(n, job, task=task)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # only process 0 prints
    assert summary["processes"] == n and summary["devices"] == n
    assert summary["compilations_per_process"] == [1] * n
    assert json.loads((job / "summary.json").read_text())["processes"] == n
    assert read_ledger(job / "ledger").header.extra["processes"] == n
    twin = single_process_twin(job, tmp_path / "twin", monkeypatch, task)
    assert twin["compilations"] == 1
    assert_same_run(job, tmp_path / "twin")
    cert = run_audit(job, replay_steps=STEPS)
    assert cert.verdict == "certified", cert.summary_text()
    assert cert.check("replay").status == "pass", cert.summary_text()


def test_two_process_mlp_matches_single_process_and_is_certified(tmp_path, monkeypatch):
    check_job(2, "digits-mlp", tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "task"), [(2, "digits-cnn"), (4, "digits-mlp"), (4, "digits-cnn")])
def test_multi_process_matches_single_process_and_is_certified(n, task, tmp_path, monkeypatch):
    check_job(n, task, tmp_path, monkeypatch)


def test_killing_one_process_stops_the_job_and_resume_loses_nothing(tmp_path, monkeypatch):
    """Process 1 is killed before step 3; the job stops with every durable record intact.

    The same killed job (copied, so both resumes start from identical files) is then
    resumed twice: with 2 processes, and with 1 process, since parameters are replicated
    and process 0's checkpoint holds them whole, the process count may change at a
    resume.  Both resumes must record what the single-process twin records, count the
    re-executed step, and be certified.  (One kill serves both resumes: the kill is
    deterministic, and training it twice proved nothing more.)
    """
    job = tmp_path / "job"
    # Process 1 SIGKILLs itself just before step 3 (deterministic, no sleeps):
    # process 0's step-3 collective fails, it flushes the ledger and stops.
    killed = launch(2, job, env={"DPVERIFY_TEST_KILL_AT": "1:3"})
    assert killed.returncode == 128 + 9, killed.stderr[-3000:]
    assert "process 1 ended with signal SIGKILL" in killed.stderr
    assert "Traceback" not in killed.stderr
    before = read_ledger(job / "ledger")
    assert before.seal is None
    assert [s.step for s in before.steps] == [0, 1, 2]
    assert not (job / "summary.json").exists()
    solo = tmp_path / "solo"
    shutil.copytree(job, solo)  # the killed job, resumed below by a single process

    # Resume with the same process count.
    resumed = launch(2, job, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = read_ledger(job / "ledger")
    resumes = [r for r in after.records if isinstance(r, Resume)]
    assert [r.step for r in resumes] == [EVERY]
    # Step 2 ran before the kill (recorded) and again after the resume: both count.
    assert [s.step for s in after.steps] == [0, 1, 2, 2, 3]
    assert after.seal.steps_executed == len(after.steps) == 5
    assert json.loads(resumed.stdout)["steps_executed"] == 5

    # Resume the copy as a plain single-process run.
    cmd = [sys.executable, "-m", "dpverify", "train", "--task", "digits-mlp", "--out", str(solo),
           *COMMON, "--json", "--resume"]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    single = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    summary = json.loads(single.stdout)
    assert summary["processes"] == 1 and summary["steps_executed"] == 5
    after_solo = read_ledger(solo / "ledger")
    assert [r.step for r in after_solo.records if isinstance(r, Resume)] == [EVERY]
    assert [s.step for s in after_solo.steps] == [0, 1, 2, 2, 3]

    # Same seed and same noise key (the copy kept it): one twin serves both.
    single_process_twin(job, tmp_path / "twin", monkeypatch, "digits-mlp")
    for run in (job, solo):
        assert_same_run(run, tmp_path / "twin")
        cert = run_audit(run, replay_steps=STEPS)
        assert cert.verdict == "certified", cert.summary_text()
        assert cert.check("replay").status == "pass", cert.summary_text()


def test_noise_added_on_every_process_is_refuted(tmp_path):
    """The bug "each process adds the step's noise before the all-reduce" (S + P·σC·z_t)."""
    job = tmp_path / "job"
    done = launch(2, job, "--mutation", "noise_per_process")
    assert done.returncode == 0, done.stderr[-3000:]
    cert = run_audit(job, replay_steps=STEPS)
    assert cert.verdict == "refuted", cert.summary_text()
    assert cert.check("replay").status == "fail", cert.summary_text()
    # Everything the ledger records about the mechanism looks right: only replay sees it.
    for name in ("integrity", "mechanics", "privacy"):
        assert cert.check(name).status == "pass", cert.summary_text()


@pytest.mark.slow
def test_killing_process_0_the_writer_then_resume_loses_nothing(tmp_path, monkeypatch):
    """The ledger writer itself dies (SIGKILL before step 3): the records it had made durable
    stay, the followers stop, and --resume re-executes (and counts) what came after."""
    job = tmp_path / "job"
    killed = launch(2, job, env={"DPVERIFY_TEST_KILL_AT": "0:3"})
    assert killed.returncode == 128 + 9, killed.stderr[-3000:]
    assert "process 0 ended with signal SIGKILL" in killed.stderr
    before = [s.step for s in read_ledger(job / "ledger").steps]
    # Steps 0, 1 were flushed by checkpoint 2; step 2's record may not have been.
    assert before in ([0, 1], [0, 1, 2])
    resumed = launch(2, job, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = read_ledger(job / "ledger")
    assert [s.step for s in after.steps] == [*before, 2, 3]
    assert after.seal.steps_executed == len(after.steps)
    single_process_twin(job, tmp_path / "twin", monkeypatch, "digits-mlp")
    assert_same_run(job, tmp_path / "twin")
    cert = run_audit(job, replay_steps=STEPS)
    assert cert.verdict == "certified", cert.summary_text()
