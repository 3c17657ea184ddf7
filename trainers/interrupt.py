"""Ctrl-C during training: finish the current step, then stop cleanly.

A ``KeyboardInterrupt`` raised while XLA is compiling or running a step can
abort the process inside native code (seen as a segmentation fault during the
first, compiling step).  Inside :func:`deferred_interrupt` the first SIGINT only
sets a flag: the loop finishes the step it is in, records it in the ledger, and
then raises ``KeyboardInterrupt`` at a step boundary, where the ledger is
flushed and the run can be resumed.  A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["InterruptFlag", "deferred_interrupt"]


class InterruptFlag:
    """Set by the first SIGINT; :meth:`check` raises at a safe point."""

    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed since entering."""
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[InterruptFlag]:
    """Defer the first SIGINT to the next :meth:`InterruptFlag.check`.

    Outside the main thread (where signal handlers cannot be installed), or
    when SIGINT is ignored (a background job), the flag is never set and
    SIGINT keeps its current disposition.
    """
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # e.g. a background job: Ctrl-C is not ours to handle
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:  # second Ctrl-C: stop now
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.requested = True
        sys.stderr.write(
            "\ndpverify: interrupt received — finishing the current step "
            "(press Ctrl-C again to stop at once)\n"
        )

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
