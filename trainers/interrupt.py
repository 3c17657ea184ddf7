"""Ctrl-C during training: finish the current step, then stop cleanly.

A ``KeyboardInterrupt`` raised while XLA is compiling or running a step can
abort the process inside native code (seen as a segmentation fault during the
first, compiling step): the exception unwinds through C++ frames of a Python
callback.  So no Ctrl-C ever raises inside a step.

Inside :func:`deferred_interrupt` the first SIGINT only sets a flag: the loop
finishes the steps in flight (the one being recorded and the one queued after
it: :class:`trainers.loop.RecordOneBehind`), records them in the ledger, and
then raises ``KeyboardInterrupt`` at a step boundary, where the ledger is
flushed and the run can be resumed.

A second Ctrl-C means "stop now".  What that does depends on the process:

* library use (the default, e.g. a notebook kernel): ``KeyboardInterrupt`` is
  raised at once, as Python does by default;
* the ``dpverify`` command (:func:`exit_process_on_second_interrupt`): further
  SIGINTs are ignored, the registered ledger writer is flushed (or, when the
  main thread is inside a ledger write, that write is finished first), one
  line is written to stderr and the process ends with ``os._exit(130)`` —
  no exception crosses native frames, and interpreter teardown (JAX's atexit
  handlers), which a third Ctrl-C could interrupt with a traceback, is
  skipped.  Once the first interrupt has been acted on, the same policy stays
  in force until the process exits, so a Ctrl-C during the shutdown also
  ends it with 130.

What is on disk is then a valid ledger prefix: every record flushed so far,
possibly followed by a torn tail that readers ignore and ``--resume`` cuts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "EXIT_CODE",
    "InterruptFlag",
    "deferred_interrupt",
    "exit_process_on_second_interrupt",
]

#: Exit status of a process stopped by SIGINT (128 + 2, the shell convention).
EXIT_CODE = 130

_HARD_EXIT = False
_RESUME_HINT = "rerun the same command with --resume to continue"


def exit_process_on_second_interrupt(enabled: bool = True) -> None:
    """Process policy (the CLI sets it): a second Ctrl-C ends the process with 130.

    Library callers keep the default (a second Ctrl-C raises
    ``KeyboardInterrupt``); a process that owns its terminal, like the
    ``dpverify`` command, sets it before training.
    """
    global _HARD_EXIT
    _HARD_EXIT = bool(enabled)


class InterruptFlag:
    """Set by the first SIGINT; :meth:`check` raises at a safe point.

    The loop registers its ledger writer with :meth:`watch` and wraps ledger
    writes in :meth:`critical`, so that a hard stop never cuts a write short
    and flushes what was appended.
    """

    def __init__(self) -> None:
        self.requested = False
        self._writer: Any = None
        self._busy = 0
        self._stop_pending = False

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed since entering."""
        if self.requested:
            raise KeyboardInterrupt

    def watch(self, writer: Any) -> None:
        """The ledger writer to flush before a hard stop (``None``: none)."""
        self._writer = writer

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A ledger write that a hard stop waits for (then flushes and exits)."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0 and self._stop_pending:
                self._hard_stop()

    def _stop_now(self) -> None:
        """Second Ctrl-C under the process policy."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self._busy:  # finish the ledger write first (critical() calls _hard_stop)
            self._stop_pending = True
            return
        self._hard_stop()

    def _hard_stop(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.flush()
        _exit_interrupted("stopped at once; every step flushed to the ledger is kept — ")


def _exit_interrupted(prefix: str = "") -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write(f"\ndpverify: interrupted: {prefix}{_RESUME_HINT}\n")
        sys.stderr.flush()
    os._exit(EXIT_CODE)


def _exit_on_sigint(signum: int, frame: Any) -> None:
    """SIGINT after the shutdown has begun (process policy): end with 130 now."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_interrupted()


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[InterruptFlag]:
    """Defer the first SIGINT to the next :meth:`InterruptFlag.check`.

    Outside the main thread (where signal handlers cannot be installed), or
    when SIGINT is ignored (a background job), the flag is never set and
    SIGINT keeps its current disposition.  On exit the previous handler is
    restored, except under the process policy after an interrupt: then a
    further SIGINT ends the process with 130 (the shutdown has begun).
    """
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # e.g. a background job: Ctrl-C is not ours to handle
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:  # second Ctrl-C: stop now
            if _HARD_EXIT:
                flag._stop_now()
                return
            signal.signal(signal.SIGINT, restore)
            raise KeyboardInterrupt
        flag.requested = True
        sys.stderr.write(
            "\ndpverify: interrupt received — finishing the current step "
            "(press Ctrl-C again to stop at once)\n"
        )

    # None: a handler installed from C; the default is the closest we can restore
    restore: Callable[..., Any] | int = signal.SIG_DFL if previous is None else previous
    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        if _HARD_EXIT and flag.requested:
            restore = _exit_on_sigint
        signal.signal(signal.SIGINT, restore)
