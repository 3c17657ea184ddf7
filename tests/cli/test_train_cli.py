"""``dpverify train`` / ``dpverify demo``: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json

import pytest

from dpverify.cli import main
from dpverify.cli._train import DEMO_DIR, _demo_dir
from trainers.tasks import get_task

SMALL = [
    "--expected-batch-size", "32", "--noise-multiplier", "1.0", "--steps", "5",
    "--physical-batch-size", "16", "--checkpoint-every", "2", "--seed", "3", "--quiet",
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sampling-rate", "1.5"], "sampling_rate=1.5 must be in (0, 1]"),
        (["--sampling-rate", "0"], "sampling_rate=0.0"),
        (["--noise-multiplier", "-1"], "noise_multiplier=-1.0 must be >= 0"),
        (["--clip-norm", "0"], "clip_norm=0.0 must be > 0"),
        (["--clip-norm", "-2"], "clip_norm=-2.0 must be > 0"),
        (["--physical-batch-size", "0"], "physical_batch_size=0 must be an integer >= 1"),
        (["--physical-batch-size", "-4"], "physical_batch_size=-4"),
        (["--task", "nope"], "task='nope' is unknown"),
        (["--precision", "fp8"], "precision='fp8'"),
        (["--sampler", "magic"], "sampler='magic'"),
        (["--steps", "0"], "steps=0"),
        (["--steps", "3", "--epochs", "1"], "not allowed with argument"),
        (["--noise-multiplier", "1", "--target-epsilon", "2"], "not allowed with argument"),
        (["--steps", "ten"], "'ten' is not an integer"),
        (["--task", "cifar10-cnn"], "needs local data"),
        (["--task", "cifar10-cnn", "--data", "/no/such.npz"], "/no/such.npz does not exist"),
        (["--data", "x.npz"], "reads no files: drop --data"),
        (["--sampler", "truncated_poisson"], "needs its cap: pass --sampler-param cap=K"),
        (["--sampler-param", "cap=80"], "has no parameter 'cap'"),
        (["--expected-batch-size", "2000"], "must be <= dataset size 1437"),
        (["--target-epsilon", "1e-9"], "target_epsilon=1e-09 is unreachable"),
        # train claims with PLD and has no --accountant: the hint must be one it can follow
        (["--target-epsilon", "1e9"], "or pass --noise-multiplier"),
        # refused before anything is written (these used to leave a run that blocked a rerun)
        (["--epochs", "1e9"], "the claimed epsilon cannot be computed for this many steps"),
        (["--steps", "1000000000000"], "steps=1000000000000: the claimed epsilon cannot be"),
        (["--physical-batch-size", "100000000"], "physical_batch_size=100000000 needs about"),
    ],
)
def test_invalid_input_is_one_line_exit_2(tmp_path, capsys, caplog, extra, message):
    rc = _run(["train", "--out", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    # dp-accounting's per-order RDP warnings (calibration at small σ) stay off the terminal.
    assert not [r for r in caplog.records if r.name == "absl" and r.levelno < 40]
    assert "RDP accountant" not in err  # train has no --accountant
    assert not (tmp_path / "r").exists()  # nothing written: a rerun is not blocked


def test_resume_without_run_is_one_line_exit_2(tmp_path, capsys):
    assert _run(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run to resume" in err


def test_out_that_cannot_be_a_run_dir_is_one_line_exit_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a run")
    for out, message in (
        (afile, "is a file, not a run directory"),
        (afile / "sub", "cannot create"),
    ):
        assert _run(["train", "--out", str(out), *SMALL]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert afile.read_text() == "not a run"


def _run(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors
        return exc.code


def test_train_json_summary_and_existing_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 5 and summary["compilations"] == 1
    assert summary["examples_per_second"] > 0 and 0 <= summary["accuracy"] <= 1
    assert set(summary["epsilon"]) >= {"rdp", "pld", "prv"}
    assert (out / "summary.json").exists()
    # Again into the same directory without --resume: refused, one line.
    assert main(["train", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err
    # --resume with settings that differ from the run: refused, one line.
    for flag in (
        ["--task", "digits-cnn"],
        ["--seed", "4"],
        ["--steps", "6"],
        ["--epochs", "20"],
        ["--target-epsilon", "3"],
        ["--declare-sampler", "shuffle"],
        ["--sampler-param", "cap=5"],
    ):
        assert main(["train", "--out", str(out), "--resume", *flag]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "differs from the run being resumed" in err, err
    # --resume of the finished run: nothing to do; it says so, then prints the summary.
    assert main(["train", "--out", str(out), *SMALL, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "is already finished (5 steps, sealed); nothing to resume" in captured.err
    text = captured.out
    assert "accuracy:" in text and "epsilon:" in text and "1 compilation" in text


def test_demo_dir_never_reuses_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(_demo_dir(None)) == DEMO_DIR
    (tmp_path / DEMO_DIR).mkdir()
    assert str(_demo_dir(None)) == f"{DEMO_DIR}-2"
    assert str(_demo_dir("x")) == "x"


def test_demo_trains_audits_and_prints_the_verdict(tmp_path, capsys, monkeypatch):
    defaults = get_task("digits-mlp").defaults
    monkeypatch.setitem(defaults, "steps", 20)  # keep the test fast; the real demo runs 150
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--seed", "2", "--replay-steps", "2", "--quiet"])
    text = capsys.readouterr().out
    assert "accuracy:" in text and "epsilon:" in text
    assert "verdict" in text.lower()
    assert (out / "certificate.json").exists()
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["verdict"] == "certified", text
    assert rc == 0
    # Again into the same directory: refused before training, one line, no --resume hint.
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--resume" not in err


def test_summary_text_says_when_there_is_no_privacy():
    from dpverify.cli._train import summary_text

    base = {"task": "digits-mlp", "sampler": "poisson", "steps": 3, "steps_executed": 3}
    text = summary_text({**base, "noise_multiplier": 0.0, "epsilon": None}, "r")
    assert "epsilon:     infinite (noise multiplier 0: no privacy)" in text
    eps = {"pld": {"epsilon": 1.5}, "prv": {"upper": 1.6}, "rdp": {"epsilon": 1.7}}
    text = summary_text({**base, "noise_multiplier": 1.0, "epsilon": eps}, "r")
    assert "PLD 1.5, PRV 1.6, RDP 1.7" in text
    assert "SHORTCUT" not in text and "warning" not in text
    weak = {"delta": 0.01, "sampling_rate": 0.1, "expected_batch_size": 50.0}
    assert "warning:     delta=0.01 is not below 1/N = 0.002" in summary_text({**base, **weak}, "r")
    fine = {"delta": 1e-5, "sampling_rate": 0.1, "expected_batch_size": 50.0}
    assert "warning" not in summary_text({**base, **fine}, "r")
    text = summary_text({**base, "sampler": "shuffle", "shortcut": True}, "r")
    assert "SHORTCUT: the Poisson epsilon does not apply" in text


@pytest.mark.parametrize(
    ("streams", "message"),
    [
        ("0", "streams=0 must be an integer >= 1"),
        # this test process's JAX has started already, with one host device
        ("64", "streams=64 needs 64 local devices, this process has 1"),
    ],
)
def test_bad_streams_are_one_line_exit_2_and_write_nothing(
    tmp_path, capsys, monkeypatch, streams, message
):
    import jax

    jax.devices()  # JAX started: the flag set for --streams can no longer take effect
    monkeypatch.setenv("XLA_FLAGS", "")  # restored after the test (the CLI appends to it)
    rc = _run(["train", "--out", str(tmp_path / "r"), *SMALL, "--streams", streams])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_streams_train_a_run_that_the_auditor_certifies(tmp_path):
    """``--streams 2`` in a fresh process: the CLI asks XLA for two host devices,
    the run deals its physical batches to both, and replay certifies it."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    train = subprocess.run(
        [sys.executable, "-m", "dpverify", "train", "--out", str(out), *SMALL,
         "--streams", "2", "--json"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    summary = json.loads(train.stdout)
    assert summary["streams"] == 2 and summary["compilations"] == 1
    from dpverify.ledger import read_ledger

    assert read_ledger(out / "ledger").header.extra["streams"] == 2
    audit = subprocess.run(
        [sys.executable, "-m", "dpverify", "audit", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert audit.stdout.startswith("verdict: CERTIFIED"), audit.stdout
    assert "[pass] replay" in audit.stdout
