"""Multi-process training on jax.distributed (``dpverify launch``), end to end on loopback.

Every case compares the multi-process job with a single-process run of the
same seed AND the same noise key (the key file of the job is reused through a
patched CSPRNG in this test process): the ledgers must record exactly the
same indices, and the released parameters must agree within float32
tolerance.  With σ > 0 this also proves the noise is added once per logical
step, not once per process (P·z would move the parameters by about
(P−1)·σC·lr/(qN) per step, far outside the tolerance).  Every job is audited
with replay and must be certified.

Checkpoints: every checkpoint a multi-process execution writes is an Orbax
directory written by all its processes; single-process executions write
msgpack files.  Resumes change the process count: 1 → 2 (a single-process
run finished by a 2-process job), 2 → 4 and 2 → 1 (one killed 2-process job,
resumed both ways); 2 → 2 is the slow kill-the-writer case.

CPU is scarce (each job costs about a minute on 2 cores): few steps, small
physical batches, and each job proves several things; the new-job CNN cases
and the killed-writer case are marked slow (they still run in CI).
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
    """A single-process run with the job's seed and (patched in) the job's noise key.

    It clips with vmap, as every multi-process execution does (ghost clipping is
    single-device only, :func:`trainers.clipping.select.resolve_clipping`), so the
    twins differ only in where the per-example terms are summed.
    """
    import dpverify.private_files as private_files
    from trainers.loop import TrainConfig, train

    key = (job / "noise.key").read_bytes()
    monkeypatch.setattr(private_files.secrets, "token_bytes", lambda n: key[:n])
    config = TrainConfig(
        task=task, expected_batch_size=40, noise_multiplier=1.0, clip_norm=0.5,
        physical_batch_size=16, steps=STEPS, checkpoint_every=EVERY, seed=5, clipping="vmap",
    )  # fmt: skip
    return train(config, out, progress=False)


def final_state(run: Path) -> tuple[str, list[np.ndarray]]:
    """The path and leaves (parameters, optimiser state) of ``run``'s final checkpoint.

    Read through the public replay API (either format, digest-checked), as the auditor does.
    """
    import jax

    from trainers.replay import load_replay_context

    ledger = read_ledger(run / "ledger")
    ctx, why = load_replay_context(run, ledger)
    assert ctx is not None, why
    rec = [c for c in ledger.checkpoints if c.step == STEPS][-1]
    state = ctx.restore(rec.step, rec.digest, rec.path)
    return rec.path, [
        np.asarray(a) for a in jax.tree_util.tree_leaves((state.params, state.opt_state))
    ]


def assert_same_run(job: Path, twin: Path, *, final_format: str = ".orbax") -> None:
    """Same noise key, the same indices at every step (last execution), the same final state.

    ``final_format``: the suffix of the job's final checkpoint (``.orbax`` when a
    multi-process execution wrote it); the twin's is always a msgpack file.
    """
    a, b = read_ledger(job / "ledger"), read_ledger(twin / "ledger")
    assert a.header.noise_key_digest == b.header.noise_key_digest
    last = {s.step: s for s in a.steps}  # the last execution of each step
    assert sorted(last) == [s.step for s in b.steps]
    for s in b.steps:
        np.testing.assert_array_equal(last[s.step].indices, s.indices)
    path_a, leaves_a = final_state(job)
    path_b, leaves_b = final_state(twin)
    assert path_a.endswith(final_format) and path_b.endswith(".msgpack")
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert_float32_twins(x, y)


def assert_float32_twins(x: np.ndarray, y: np.ndarray) -> None:
    """``x`` and ``y`` are one leaf of two runs that differ only in float32 rounding.

    The runs sum the same per-example terms in another order (per process, then
    all-reduced), and Adam amplifies that rounding wherever its first moment
    nearly cancels (m̂ ≈ 0 while v̂ is not): one element in a few thousand then
    moves by up to about 1e-3 of a step.  So: all but 0.1 % of the elements (one in a small leaf) agree to
    float32 tolerance (rtol 2e-5), and every element to 1e-3 of the leaf's
    scale.  The bugs this comparison exists for (noise added on every process,
    a lost or repeated step) move most elements by a whole Adam step (lr =
    1.5e-2 here, about 5 % of the weights' scale) and fail both.
    """
    assert x.shape == y.shape and x.dtype == y.dtype
    scale = float(np.max(np.abs(y))) or 1.0
    tight = np.abs(x - y) <= 2e-6 + 2e-5 * np.abs(y)
    loose = int((~tight).sum())
    assert loose <= max(1, y.size // 1000), f"{loose} of {y.size} elements beyond rtol 2e-5"
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-3 * scale)


def assert_certified(run: Path) -> None:
    cert = run_audit(run, replay_steps=STEPS)
    assert cert.verdict == "certified", cert.summary_text()
    assert cert.check("replay").status == "pass", cert.summary_text()


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
    assert [c.path.rsplit(".", 1)[1] for c in read_ledger(job / "ledger").checkpoints] == [
        "orbax"
    ] * 3  # checkpoints 0, 2, 4: every one written by all n processes with Orbax
    assert_certified(job)


class _Stop(Exception):
    """Raised by a patched loop to stop a single-process run before a step."""


def test_single_process_run_resumed_by_two_processes_loses_nothing(tmp_path, monkeypatch):
    """1 → 2: a single-process run stopped before step EVERY (msgpack checkpoints 0 and
    EVERY) is resumed by a 2-process job, which restores the msgpack checkpoint on
    process 0, shares it, and writes the final checkpoint with Orbax.  The ledger then
    names both formats; it must record exactly the indices of an uninterrupted
    single-process run of the same seed and noise key, reach the same parameters, and
    be certified with replay (which reads both formats)."""
    import trainers.loop as loop

    job = tmp_path / "job"
    real = loop._step_record

    def stop_at(t, *args, **kwargs):
        if t == EVERY:
            raise _Stop
        return real(t, *args, **kwargs)

    config = loop.TrainConfig(
        task="digits-mlp", expected_batch_size=40, noise_multiplier=1.0, clip_norm=0.5,
        physical_batch_size=16, steps=STEPS, checkpoint_every=EVERY, seed=5,
    )  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(loop, "_step_record", stop_at)
        with pytest.raises(_Stop):
            loop.train(config, job, progress=False)
    assert [s.step for s in read_ledger(job / "ledger").steps] == list(range(EVERY))

    done = launch(2, job, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # only process 0 prints
    assert summary["processes"] == 2 and summary["devices"] == 2
    assert summary["compilations_per_process"] == [1, 1]
    assert summary["steps_executed"] == STEPS and summary["resumed_from"] == EVERY
    after = read_ledger(job / "ledger")
    assert [r.step for r in after.records if isinstance(r, Resume)] == [EVERY]
    assert [s.step for s in after.steps] == list(range(STEPS))  # nothing repeated or lost
    assert [(c.step, c.path.rsplit(".", 1)[1]) for c in after.checkpoints] == [
        (0, "msgpack"), (EVERY, "msgpack"), (STEPS, "orbax"),
    ]  # fmt: skip
    single_process_twin(job, tmp_path / "twin", monkeypatch, "digits-mlp")
    assert_same_run(job, tmp_path / "twin")
    assert_certified(job)

    # One flipped bit in a stored array of the final Orbax checkpoint: replay refuses it.
    final = job / after.checkpoints[-1].path
    shard = sorted(p for p in (final / "state").rglob("*") if p.is_file() and p.parent.name == "d")
    data = bytearray(shard[0].read_bytes())
    data[-1] ^= 0x01
    shard[0].write_bytes(bytes(data))
    cert = run_audit(job, replay_steps=STEPS)
    assert cert.verdict == "refuted", cert.summary_text()
    assert cert.check("replay").status == "fail"
    assert "does not match its ledger digest" in cert.check("replay").reason


@pytest.mark.slow
@pytest.mark.parametrize(("n", "task"), [(2, "digits-cnn")])
def test_multi_process_matches_single_process_and_is_certified(n, task, tmp_path, monkeypatch):
    """A new 2-process CNN job (convolutions sharded over processes).  Four processes
    run in the 2 → 4 resume of test_killing_one_process_stops_the_job_and_resume_loses_nothing
    (MLP); `check_job(4, "digits-cnn", …)` passed too but costs a CPU-minute of CI."""
    check_job(n, task, tmp_path, monkeypatch)


def test_killing_one_process_stops_the_job_and_resume_loses_nothing(tmp_path, monkeypatch):
    """Process 1 of a 2-process job is killed before step 3; the job stops with every
    durable record intact and checkpoint EVERY written by both processes (Orbax).

    The same killed job (copied, so both resumes start from identical files) is then
    resumed twice, each time with another process count: by 4 processes (2 → 4: the
    Orbax checkpoint is read whole by process 0 and shared, and the 4 processes write
    the final one), and by 1 process (2 → 1: a plain single-process run reads the
    Orbax checkpoint and writes msgpack).  Both must record, for every step, what an
    uninterrupted single-process twin records, count the re-executed step, reach its
    parameters and be certified with replay.
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
    assert [c.path for c in before.checkpoints] == [
        "checkpoints/step-00000000.orbax", f"checkpoints/step-{EVERY:08d}.orbax",
    ]  # fmt: skip
    assert not (job / "summary.json").exists()
    solo = tmp_path / "solo"
    shutil.copytree(job, solo)  # the killed job, resumed below by a single process

    # 2 → 4 processes.
    resumed = launch(4, job, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert summary["processes"] == 4 and summary["compilations_per_process"] == [1] * 4
    after = read_ledger(job / "ledger")
    resumes = [r for r in after.records if isinstance(r, Resume)]
    assert [r.step for r in resumes] == [EVERY]
    assert resumes[0].checkpoint_digest == before.checkpoints[-1].digest
    # Step 2 ran before the kill (recorded) and again after the resume: both count.
    assert [s.step for s in after.steps] == [0, 1, 2, 2, 3]
    assert after.seal.steps_executed == len(after.steps) == 5
    assert summary["steps_executed"] == 5

    # 2 → 1: resume the copy as a plain single-process run.
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
    assert_same_run(job, tmp_path / "twin")
    assert_same_run(solo, tmp_path / "twin", final_format=".msgpack")
    for run in (job, solo):
        assert_certified(run)


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
    assert_certified(job)
