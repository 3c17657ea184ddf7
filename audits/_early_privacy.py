"""The privacy accounting started early, in a second process, while the one pass runs.

The privacy check's ε depends only on the accounting segments (each run of
steps' recorded q and σ), δ and the accounting options — the ledger's
per-step fields, not its index arrays.  :func:`start` launches a fresh
interpreter running :func:`dpverify.accounting._fields_only.main` (it imports
``dpverify`` only) on the ledger, which reads the
records file's frames (checksums and hash chain verified by the ledger's
own frame scanner), parses the step fields only (no index decoding), builds
the segments from the recorded rates and σ as the privacy check does, and
runs :func:`dpverify.accounting.compute_epsilon` at the header's δ — about
20 CPU seconds at ImageNet scale (PRV), on the CPU the pass leaves idle.

:meth:`EarlyPrivacy.compute` stands in for ``compute_epsilon`` in the
privacy check: it returns the early report only when the segments, δ and
options it was computed for *equal* those the check built from the verified
outline (and the rates the sampling check decided to trust); otherwise, or
when the process failed, it computes them itself.  ``compute_epsilon`` is a
function of exactly these inputs, so the certificate is the same as without
it (tested); only the accountants' recorded ``seconds`` are the early run's.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["EarlyPrivacy", "start"]

#: Longest wait for the early result before computing it here instead (seconds).
WAIT_SECONDS = 900.0

#: Smallest records file worth a second process (64 MiB, ≈ 4 000 ImageNet-sized steps):
#: below it the accounting and the pass are short, and a process start is not free.
MIN_BYTES = 1 << 26


def worth_starting(ledger_path: str | os.PathLike[str]) -> bool:
    """A large ledger and a second CPU for this process."""
    from dpverify.ledger._files import RECORDS_NAME

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        size = (Path(ledger_path) / RECORDS_NAME).stat().st_size
    except OSError:
        return False
    return cpus >= 2 and size >= MIN_BYTES


class EarlyPrivacy:
    """A running early accounting process (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self._proc: subprocess.Popen | None = proc
        self._result: tuple | None = None
        self.used = False

    def _collect(self) -> tuple | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return self._result
        try:
            out, _ = proc.communicate(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return None
        if proc.returncode != 0 or not out:
            return None
        try:
            self._result = pickle.loads(out)  # our own child's answer
        except Exception:
            self._result = None
        return self._result

    def compute(self, segments: Any, delta: float, **options: Any) -> Any:
        """``compute_epsilon(segments, delta, **options)``, from the early process when its
        inputs were exactly these."""
        from dpverify import accounting

        early = self._collect()
        if early is not None:
            e_segments, e_delta, e_options, report = early
            if list(e_segments) == list(segments) and e_delta == delta and e_options == options:
                self.used = True
                return report
        return accounting.compute_epsilon(segments, delta, **options)

    def close(self) -> None:
        """Stop the process if it still runs (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()


def start(ledger_path: str | os.PathLike[str], max_groups: int | None = None) -> EarlyPrivacy | None:
    """Launch the early accounting of the ledger at ``ledger_path`` (``None`` if it can not start)."""
    import dpverify

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(dpverify.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    # one CPU: the pass has the other (numpy's BLAS would start a thread per CPU)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = "1"
    argv = [str(ledger_path)] + ([str(int(max_groups))] if max_groups is not None else [])
    code = f"import sys; from dpverify.accounting._fields_only import main; sys.exit(main({argv!r}))"
    args = [sys.executable, "-c", code]
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip
    except OSError:
        return None
    return EarlyPrivacy(proc)
