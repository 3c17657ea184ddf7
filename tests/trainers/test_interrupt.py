"""Ctrl-C during training stops at a step boundary, never inside a step.

The end-to-end tests run ``dpverify train`` in a subprocess that pauses at a
chosen point (a hook blocks on its stdin and says so on stdout), so each
SIGINT lands exactly where the test means it to — no sleeps racing the run.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from trainers import interrupt as interrupt_module
from trainers.interrupt import deferred_interrupt


def _wait_for_handler(flag, attempts=10_000):
    # The Python-level handler runs at the next bytecode boundary of the main
    # thread after os.kill returns; a few no-op iterations are enough.
    for _ in range(attempts):
        if flag.requested:
            return
    raise AssertionError("the SIGINT handler never ran")


def test_first_sigint_is_deferred_to_the_check():
    with deferred_interrupt() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_handler(flag)
        with pytest.raises(KeyboardInterrupt):
            flag.check()


def test_second_sigint_interrupts_at_once_and_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), deferred_interrupt() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_handler(flag)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):
            pass
        raise AssertionError("the second SIGINT did not interrupt")
    assert signal.getsignal(signal.SIGINT) is before


def test_no_interrupt_means_no_exception():
    with deferred_interrupt() as flag:
        flag.check()
    assert not flag.requested


def test_library_default_keeps_the_previous_handler_after_an_interrupt():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), deferred_interrupt() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_handler(flag)
        flag.check()
    assert signal.getsignal(signal.SIGINT) is before
    assert interrupt_module._HARD_EXIT is False


# The child: `dpverify train` with one pause point.  Modes:
#   step   pause before step STEP is recorded (outside any ledger write)
#   write  pause inside the ledger append of step STEP
#   exit   like step, and pause again in an atexit hook (interpreter teardown)
_CHILD = textwrap.dedent(
    """
    import atexit, sys
    import jax  # noqa: F401  (its atexit handlers first, so ours runs before them)
    import trainers.loop as loop
    from dpverify.cli import main
    from dpverify.ledger.writer import LedgerWriter

    mode, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

    def pause(tag):
        print(tag, flush=True)
        sys.stdin.readline()

    if mode == "write":
        append = LedgerWriter.append
        def hooked_append(self, record):
            if getattr(record, "indices", None) is not None and record.step == at:
                pause("PAUSE")
            return append(self, record)
        LedgerWriter.append = hooked_append
    else:
        step_record = loop._step_record
        def hooked_step_record(t, *a, **k):
            if t == at:
                pause("PAUSE")
            return step_record(t, *a, **k)
        loop._step_record = hooked_step_record
    if mode == "exit":
        atexit.register(pause, "AT_EXIT")
    raise SystemExit(main(argv))
    """
)


def _train_cmd(out):
    return ["train", "--task", "digits-mlp", "--out", str(out), "--steps", "12", "--quiet"]


def _start(mode, at, out):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode, str(at), *_train_cmd(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_until(stream, needle):
    lines = []
    for line in stream:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never came; got {''.join(lines)!r}")


def _interrupt_once(proc):
    """At the pause: SIGINT, and wait until the handler has acknowledged it."""
    _read_until(proc.stdout, "PAUSE")
    proc.send_signal(signal.SIGINT)
    return _read_until(proc.stderr, "interrupt received")


def _finish(proc, before):
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return out, "".join(before) + err


def _steps_in_ledger(run_dir):
    from dpverify.ledger import read_ledger, verify_ledger

    assert verify_ledger(run_dir / "ledger").ok
    return [s.step for s in read_ledger(run_dir / "ledger").steps]


def test_one_ctrl_c_finishes_the_step_records_it_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc = _start("step", 3, out)
    before = _interrupt_once(proc)
    proc.stdin.write("\n")  # let step 3 finish
    proc.stdin.flush()
    _, err = _finish(proc, before)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in err.strip().splitlines()[-1]
    # Steps are recorded one behind the device: when step 3 is being recorded,
    # step 4 is already running.  Both steps in progress are finished and recorded.
    assert _steps_in_ledger(out) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("mode", "recorded"), [("step", [0, 1, 2]), ("write", [0, 1, 2, 3])])
def test_second_ctrl_c_stops_at_once_with_an_intact_resumable_ledger(tmp_path, mode, recorded):
    """Second SIGINT: exit 130, no traceback; every appended step is flushed;
    a ledger write in progress is finished first; --resume completes the run."""
    out = tmp_path / "run"
    proc = _start(mode, 3, out)
    before = _interrupt_once(proc)
    proc.send_signal(signal.SIGINT)
    if mode == "write":  # the stop waits for the ledger write: let it finish
        proc.stdin.write("\n")
        proc.stdin.flush()
    _, err = _finish(proc, before)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in err.strip().splitlines()[-1]
    assert _steps_in_ledger(out) == recorded
    if mode == "step":
        done = subprocess.run(
            [sys.executable, "-m", "dpverify", *_train_cmd(out), "--resume"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert verify_ledger_sealed(out)


def verify_ledger_sealed(run_dir):
    from dpverify.ledger import read_ledger

    return read_ledger(run_dir / "ledger").seal is not None


def test_ctrl_c_during_interpreter_teardown_still_exits_130_without_traceback(tmp_path):
    """The first Ctrl-C was acted on; a second one while atexit handlers run
    (where JAX's clear_backends used to print a KeyboardInterrupt traceback)."""
    out = tmp_path / "run"
    proc = _start("exit", 2, out)
    before = _interrupt_once(proc)
    proc.stdin.write("\n")
    proc.stdin.flush()
    before += _read_until(proc.stdout, "AT_EXIT")
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc, before)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert _steps_in_ledger(out) == [0, 1, 2, 3]  # step 3 was running: recorded too
