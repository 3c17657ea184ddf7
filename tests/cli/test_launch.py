"""``dpverify launch`` and the multi-process flags of ``dpverify train``: refusals, supervision."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dpverify.cli import main
from dpverify.cli._launch import LOOPBACK, _supervise, launch_command


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["launch", "-n", "2"], "launch needs a command after --"),
        (["launch", "-n", "2", "--"], "launch needs a command after --"),
        (["launch", "-n", "2", "--", "audit", "x"], "command='audit': launch runs only `train`"),
        (["launch", "-n", "0", "--", "train", "--out", "x"], "num_processes=0 must be >= 1"),
        (["launch", "-n", "2", "--", "train", "--out", "x", "--process-id", "1"],
         "--process-id is set by launch"),
        (["launch", "-n", "2", "--", "train", "--out", "x", "--coordinator=1.2.3.4:5"],
         "--coordinator is set by launch"),
        (["launch", "-n", "2", "--port", "70000", "--", "train", "--out", "x"],
         "port=70000 must be in 1..65535"),
        (["train", "--out", "x", "--num-processes", "2"],
         "a multi-process run also needs --process-id, --coordinator"),
        (["train", "--out", "x", "--num-processes", "2", "--process-id", "2",
          "--coordinator", "127.0.0.1:5"], "process_id=2 must be < num_processes=2"),
        (["train", "--out", "x", "--num-processes", "2", "--process-id", "1",
          "--coordinator", "nohost"], "coordinator='nohost' must be HOST:PORT"),
    ],
)  # fmt: skip
def test_refusals_are_one_line_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_each_process_gets_its_id_and_the_loopback_coordinator():
    argv = launch_command(["train", "--out", "r"], 4, 3, 4567)
    assert argv[1:] == [
        "-m", "dpverify", "train", "--out", "r", "--num-processes", "4", "--process-id", "3",
        "--coordinator", "127.0.0.1:4567",
    ]  # fmt: skip
    assert LOOPBACK == "127.0.0.1"


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def _ready(code: str) -> subprocess.Popen:
    """A process running ``code`` after it has printed that its signal handling is set."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"  # no sleeps: a handshake
    return proc


def test_first_failure_stops_the_others_and_sets_the_exit_status(capsys):
    waiting = _ready(
        "import time\nprint('ready', flush=True)\ntry:\n time.sleep(120)\n"
        "except KeyboardInterrupt:\n raise SystemExit(7)"
    )
    failing = _python("raise SystemExit(3)")
    started = time.monotonic()
    assert _supervise([waiting, failing], grace=60) == 3
    assert waiting.returncode == 7  # it was sent SIGINT, not left running
    assert time.monotonic() - started < 30
    assert "process 1 ended with status 3; stopping the others" in capsys.readouterr().err


def test_a_process_ignoring_sigint_is_killed_after_the_grace_period():
    stubborn = _ready(
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(120)"
    )
    failing = _python("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert _supervise([stubborn, failing], grace=0.5) == 128 + 9
    assert stubborn.returncode == -9


def test_a_signal_death_is_named_before_a_status_1_seen_in_the_same_poll(capsys):
    # Process 1 is killed; process 0 (whose collective broke) exits 1. Both have ended
    # before the launcher's first poll: the kill is the cause, whatever the order.
    effect = _python("raise SystemExit(1)")
    cause = _python("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    effect.wait()
    cause.wait()
    assert _supervise([effect, cause], grace=1) == 128 + 9
    assert "process 1 ended with signal SIGKILL; stopping the others" in capsys.readouterr().err


def test_all_succeeding_is_exit_0():
    assert _supervise([_python("pass"), _python("pass")], grace=1) == 0


def test_gpus_per_process_gives_each_process_its_own_gpus():
    from dpverify.cli._launch import process_env

    assert process_env(2, 2)["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert process_env(0, 1)["CUDA_VISIBLE_DEVICES"] == "0"
    import os

    assert process_env(1, None).get("CUDA_VISIBLE_DEVICES") == os.environ.get(
        "CUDA_VISIBLE_DEVICES"
    )
