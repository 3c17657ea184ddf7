"""Ctrl-C during training stops at a step boundary, never inside a step."""

import os
import signal
import subprocess
import sys
import time

import pytest

from trainers.interrupt import deferred_interrupt


def test_first_sigint_is_deferred_to_the_check():
    with deferred_interrupt() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes; nothing is raised here
        assert flag.requested
        with pytest.raises(KeyboardInterrupt):
            flag.check()


def test_second_sigint_interrupts_at_once_and_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before


def test_no_interrupt_means_no_exception():
    with deferred_interrupt() as flag:
        flag.check()
    assert not flag.requested


@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["during_setup", "during_first_step"])
def test_ctrl_c_during_training_exits_130_with_an_intact_resumable_ledger(tmp_path, delay):
    """SIGINT once the ledger exists — during the rest of the setup (where a
    KeyboardInterrupt raised inside a JAX callback used to be swallowed, and
    the run went on) or usually inside the first, compiling step: exit 130,
    one message line with the resume hint, the ledger verifies, and --resume
    finishes the run."""
    from dpverify.ledger import verify_ledger

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dpverify", "train", "--task", "digits-mlp", "--out", str(out)]
    cmd += ["--steps", "40", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "ledger" / "records.log").exists() and proc.poll() is None:
        assert time.time() < deadline, "the run never created its ledger"
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err.strip().splitlines()[-1]
    assert verify_ledger(out / "ledger").ok
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
