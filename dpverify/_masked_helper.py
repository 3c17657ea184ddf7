"""A second process for the battery's per-example work (the masked path).

Every statistic of :class:`~dpverify._masked.MaskedRange` is a sum
over examples, so the examples can be split at an index s: the calling
process keeps ``[0, s)``, a helper process holds ``[s, N)`` and is sent, per
chunk of steps, each batch's part at or above s (int32, relative to s).
At the end it returns its range's counts, last steps, gap histogram, lagged
overlaps and per-step partial hashes, which add to the caller's (integers:
the merged summary is the same, bit for bit, as one process's).

The helper is a fresh interpreter (``python -m dpverify._masked_helper``, which imports numpy and the kernel only; no
fork of a possibly threaded caller, and unlike multiprocessing's ``spawn`` it
never re-imports the caller's main script, so a script without an
``if __name__ == "__main__"`` guard works) that serves one
:class:`MaskedRange` at a time over two pipes; one helper serves every
segment of a ledger.  Sends block while
the helper is busy with the previous chunk (the pipe holds at most 1 MiB),
so at most two chunks are in flight and memory stays bounded.  An error in
the helper (a ``MemoryError`` included) is sent back and raised in the
caller as the same exception type where it is a ``MemoryError``, else as a
:class:`HelperError` naming it; a helper that dies without a word (killed)
is reported by its exit code.  Nothing waits without watching the process:
a dead helper can not hang the audit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

__all__ = ["HelperError", "RangeHelper", "available_cpus"]


class HelperError(RuntimeError):
    """The helper process failed or stopped; the battery's statistics are incomplete."""


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _serve(conn: Any) -> None:  # pragma: no cover - runs in the helper process
    from dpverify._masked import MaskedRange

    state: MaskedRange | None = None
    try:
        while True:
            msg = conn.recv()
            op = msg[0]
            if op == "open":
                _, lo, size, max_lag, key = msg
                state = MaskedRange(lo, size, max_lag, np.uint64(key))
            elif op == "steps":
                assert state is not None
                _, t0, sizes, flat = msg
                state.steps(flat, sizes, t0)
            elif op == "close":
                assert state is not None
                conn.send(("result", state.result()))
                state = None
            elif op == "exit":
                return
    except EOFError:  # the caller went away
        return
    except BaseException as exc:  # every failure is reported to the caller
        try:
            conn.send(("error", type(exc).__name__, " ".join(str(exc).split())))
        except Exception:
            pass
        raise SystemExit(1) from None


def _stop(proc: Any, conn: Any) -> None:
    try:
        conn.close()
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _Duplex:
    """One reading and one writing :class:`Connection` (two pipes) as one object."""

    def __init__(self, read: Connection, write: Connection) -> None:
        self._r, self._w = read, write

    def send(self, obj: Any) -> None:
        self._w.send(obj)

    def recv(self) -> Any:
        return self._r.recv()

    def poll(self, timeout: float = 0.0) -> bool:
        return self._r.poll(timeout)

    def close(self) -> None:
        for c in (self._r, self._w):
            try:
                c.close()
            except OSError:
                pass


def _widen(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (Linux; fewer switches per chunk); harmless if refused."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass


class RangeHelper:
    """A helper process holding the masked state of an upper range of examples.

    Started on first use (:meth:`open`); :meth:`shutdown` (or garbage
    collection, or the interpreter's exit: the process is a daemon) stops it.
    """

    def __init__(self) -> None:
        self._proc: Any = None
        self._conn: Any = None
        self._finalizer: Any = None

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        to_parent_r, to_parent_w = os.pipe()
        _widen(to_child_w)
        import dpverify

        env = dict(os.environ)
        # the child imports dpverify from where this process did
        root = os.path.dirname(os.path.dirname(os.path.abspath(dpverify.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dpverify._masked_helper", str(to_child_r), str(to_parent_w)],
                pass_fds=(to_child_r, to_parent_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            os.close(to_child_r)
            os.close(to_parent_w)
        conn = _Duplex(
            Connection(to_parent_r, writable=False), Connection(to_child_w, readable=False)
        )
        self._proc, self._conn = proc, conn
        self._finalizer = weakref.finalize(self, _stop, proc, conn)

    def _failed(self, cause: BaseException | None) -> BaseException:
        """The helper's own error message if it sent one, else its exit status."""
        conn, proc = self._conn, self._proc
        try:
            if conn is not None and conn.poll(2.0):
                msg = conn.recv()
                if msg[0] == "error":
                    _, kind, text = msg
                    self.shutdown()
                    if kind == "MemoryError":
                        return MemoryError(f"the battery's helper process ran out of memory: {text}")
                    return HelperError(f"the battery's helper process failed: {kind}: {text}")
        except (EOFError, OSError):
            pass
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
        self.shutdown()
        why = f" ({type(cause).__name__})" if cause is not None else ""
        return HelperError(
            f"the battery's helper process stopped unexpectedly (exit code {code}){why}"
        )

    def _send(self, msg: tuple) -> None:
        if self._conn is None:
            raise HelperError("the battery's helper process is not running")
        try:
            self._conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError) as exc:
            raise self._failed(exc) from None

    def open(self, lo: int, size: int, max_lag: int, key: np.uint64) -> None:
        """Start (if needed) and give the helper a fresh range ``[lo, lo + size)``."""
        if self._proc is None:
            self._start()
        self._send(("open", int(lo), int(size), int(max_lag), int(key)))

    def steps(self, flat: np.ndarray, sizes: np.ndarray, t0: int) -> None:
        """Send consecutive steps' parts (local int32 indices, sizes)."""
        self._send(("steps", int(t0), sizes, flat))

    def close(self) -> tuple[np.ndarray, ...]:
        """The range's ``(counts, last, gap_hist, lag_overlap, hashes)``; the helper stays up."""
        self._send(("close",))
        conn, proc = self._conn, self._proc
        while True:  # wait for the answer, watching the process
            try:
                if conn.poll(1.0):
                    msg = conn.recv()
                    break
            except (EOFError, OSError) as exc:
                raise self._failed(exc) from None
            if proc.poll() is not None and not conn.poll(0):
                raise self._failed(None)
        if msg[0] == "error":
            _, kind, text = msg
            self.shutdown()
            if kind == "MemoryError":
                raise MemoryError(f"the battery's helper process ran out of memory: {text}")
            raise HelperError(f"the battery's helper process failed: {kind}: {text}")
        return msg[1]

    def shutdown(self) -> None:
        """Stop the helper process (idempotent)."""
        if self._proc is None:
            return
        try:
            if self._proc.poll() is None:
                self._conn.send(("exit",))
        except Exception:
            pass
        if self._finalizer is not None:
            self._finalizer()
        self._proc = self._conn = self._finalizer = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


if __name__ == "__main__":  # pragma: no cover - the helper process
    _read_fd, _write_fd = int(sys.argv[1]), int(sys.argv[2])
    _serve(_Duplex(Connection(_read_fd, writable=False), Connection(_write_fd, readable=False)))
