"""Writing a ledger: one writer, append-only, hash-chained, group-committed.

Durability policy: records are buffered in memory and written + synced
(``fdatasync``) every ``group_commit`` records — on a background thread, so the
trainer does not wait for the disk — and synchronously at
:meth:`LedgerWriter.flush`, before every :class:`Checkpoint` record, and at
:meth:`LedgerWriter.close`.  A crash loses at most the records not yet synced;
what is on disk is always a valid prefix, possibly followed by a torn tail
that readers ignore.

Every synchronous commit also appends ``COUNT HEAD`` to ``ledger/heads`` (the
number of durable records and the chain head after them, docs/ledger-format.md
§3.2), so a rewritten or cut chain is detectable against it, or against a copy
of it kept elsewhere.

Write-ahead rule: call :meth:`~LedgerWriter.flush` (appending a ``Checkpoint``
does it too) *before* saving model parameters, so every step the parameters
reflect is durable in the ledger first.

Example:
    >>> import numpy as np
    >>> from dpverify.ledger import LedgerWriter, RunHeader, Step, Seal, read_ledger
    >>> header = RunHeader(dataset_size=1000, sampler="poisson", sampling_rate=0.01,
    ...                    noise_multiplier=1.1, clip_norm=1.0, delta=1e-5)
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory(); d = pathlib.Path(tmp.name) / "ledger"
    >>> with LedgerWriter.create(d, header) as w:
    ...     w.append(Step(step=0, indices=np.array([3, 17, 254]), noise_std=1.1))
    ...     w.close(seal=Seal(steps_executed=1, final_step=1))
    >>> len(read_ledger(d).steps)
    1
    >>> tmp.cleanup()
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from dpverify._validate import check_int
from dpverify.errors import InvalidArgument, LedgerError
from dpverify.ledger._files import (
    MANIFEST_NAME,
    RECORDS_NAME,
    WriterLock,
    atomic_write,
    fsync_dir,
    manifest_bytes,
)
from dpverify.ledger._framing import GENESIS, MAGIC, chain_next, encode_frame
from dpverify.ledger._heads import HEADS_NAME, format_line, prepare_for_append
from dpverify.ledger._payload import encode_payload, encode_payloads
from dpverify.ledger._sequence import SequenceState
from dpverify.ledger.records import Checkpoint, Record, Resume, RunHeader, Seal, Step

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

__all__ = ["LedgerWriter"]


class LedgerWriter:
    """The single writer of a ledger directory.

    Create with :meth:`create` (new ledger) or :meth:`resume` (continue after a
    restart); never construct directly.

    Attributes:
        path: the ledger directory.
        header: the run header.
        head: hex SHA-256 chain head after the last appended record.
    """

    def __init__(self, *, _token: object, path: Path, lock: WriterLock, fd: int,
                 header: RunHeader, chain: bytes, state: SequenceState,
                 group_commit: int, heads_fd: int, heads_count: int) -> None:  # fmt: skip
        if _token is not _TOKEN:
            raise TypeError("use LedgerWriter.create(...) or LedgerWriter.resume(...)")
        self.path = path
        self.header = header
        self._lock = lock
        self._fd = fd
        self._chain = chain
        self._state = state
        self._group_commit = group_commit
        self._heads_fd = heads_fd
        self._heads_count = heads_count
        self._buffer = bytearray()
        self._pending: list[Record] = []
        self._syncer: Executor | None = None
        self._inflight: Future | None = None
        self._closed = False

    # ------------------------------------------------------------ opening

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], header: RunHeader, *, group_commit: int = 64
    ) -> LedgerWriter:
        """Create a new ledger directory at ``path`` and hold its lock.

        Raises:
            LedgerError: a ledger (or a file) already exists at ``path``.
            InvalidArgument: ``header`` is not a RunHeader or ``group_commit`` < 1.
        """
        if not isinstance(header, RunHeader):
            raise InvalidArgument(f"header={type(header).__name__} must be a RunHeader")
        group_commit = check_int("group_commit", group_commit, minimum=1)
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise LedgerError(f"{path}: exists and is not a directory")
        if (path / MANIFEST_NAME).exists() or (path / RECORDS_NAME).exists():
            raise LedgerError(f"{path}: a ledger already exists here")
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fsync_dir(path.parent)
        lock = WriterLock(path)
        try:
            if (path / MANIFEST_NAME).exists() or (path / RECORDS_NAME).exists():
                raise LedgerError(f"{path}: a ledger already exists here")
            code, payload = encode_payload(header)
            chain = chain_next(GENESIS, code, payload)
            atomic_write(path / MANIFEST_NAME, manifest_bytes(header))
            atomic_write(path / RECORDS_NAME, MAGIC + encode_frame(code, payload, chain))
            atomic_write(path / HEADS_NAME, format_line(1, chain.hex()))
            fd = os.open(path / RECORDS_NAME, os.O_WRONLY | os.O_APPEND)
            heads_fd = os.open(path / HEADS_NAME, os.O_WRONLY | os.O_APPEND)
        except BaseException:
            lock.release()
            raise
        state = SequenceState()
        state.accept(header)
        return cls(_token=_TOKEN, path=path, lock=lock, fd=fd, header=header, chain=chain,
                   state=state, group_commit=group_commit, heads_fd=heads_fd,
                   heads_count=1)  # fmt: skip

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        *,
        step: int,
        checkpoint_digest: str | None = None,
        group_commit: int = 64,
    ) -> LedgerWriter:
        """Reopen an existing ledger after a restart and append ``Resume(step)``.

        Takes the lock, verifies the whole ledger, cuts off a torn tail (the
        complete prefix is kept), then appends the resume record.  The next
        appended step must have index ``step``.

        Raises:
            UnusableInput: no ledger at ``path``.
            LedgerLocked: another writer holds the lock.
            LedgerCorrupt: the existing ledger fails verification.
            LedgerError: the ledger is sealed.
            InvalidArgument: ``step`` > the number of the next step.
        """
        from dpverify.ledger.reader import LedgerScan

        step = check_int("step", step, minimum=0)
        group_commit = check_int("group_commit", group_commit, minimum=1)
        scan = LedgerScan(path)
        lock = WriterLock(scan.path)
        try:
            for _ in scan:
                pass
            state = scan.state
            if state.sealed:
                raise LedgerError(f"{scan.path}: the ledger is sealed; nothing may be appended")
            records = scan.path / RECORDS_NAME
            fd = os.open(records, os.O_WRONLY | os.O_APPEND)
            if scan.torn_tail_bytes:
                os.ftruncate(fd, scan.end_offset)
                os.fsync(fd)
            had_heads = (scan.path / HEADS_NAME).exists()
            heads_fd = prepare_for_append(scan.path / HEADS_NAME)
            if not had_heads:
                fsync_dir(scan.path)
        except BaseException:
            lock.release()
            raise
        assert state.header is not None
        writer = cls(_token=_TOKEN, path=scan.path, lock=lock, fd=fd, header=state.header,
                     chain=bytes.fromhex(scan.head), state=state,
                     group_commit=group_commit, heads_fd=heads_fd,
                     heads_count=state.records)  # fmt: skip
        try:
            writer._append(Resume(step=step, checkpoint_digest=checkpoint_digest))
            writer.flush()
        except BaseException:
            writer._release()
            raise
        return writer

    # ------------------------------------------------------------ writing

    @property
    def head(self) -> str:
        """Hex chain head after the last appended record."""
        self._encode_pending()
        return self._chain.hex()

    @property
    def next_step(self) -> int:
        """The index the next :class:`Step` must have."""
        return self._state.next_step

    @property
    def steps_executed(self) -> int:
        """Number of Step records in the ledger (repeats after resumes included)."""
        return self._state.steps

    def append(self, record: Step | Checkpoint) -> None:
        """Append a :class:`Step` or :class:`Checkpoint` record.

        A Checkpoint is preceded by a flush (write-ahead rule) and committed
        immediately.

        Raises:
            InvalidArgument: wrong record type, or out of sequence (the first
                step is 0, then +1; after ``Resume(k)`` the next is ``k``),
                or an index ≥ dataset_size.
            LedgerError: the writer is closed.
        """
        if not isinstance(record, (Step, Checkpoint)):
            raise InvalidArgument(
                f"record={type(record).__name__} cannot be appended "
                "(only Step and Checkpoint; use resume() and close(seal=...))"
            )
        if isinstance(record, Checkpoint):
            self.flush()
            self._append(record)
            self.flush()
        else:
            self._append(record)

    def _append(self, record: Record) -> None:
        if self._closed:
            raise LedgerError(f"{self.path}: the ledger writer is closed")
        problem = self._state.problem(record)
        if problem is not None:
            raise InvalidArgument(problem)
        if isinstance(record, Step):
            _check_widths(record)
        self._state.accept(record)
        self._pending.append(record)
        if len(self._pending) >= self._group_commit:
            self._commit(wait=False)

    def _encode_pending(self) -> None:
        """Frame and chain the pending records (index blocks encoded as one batch)."""
        if not self._pending:
            return
        chain = self._chain
        for code, payload in encode_payloads(self._pending):
            chain = chain_next(chain, code, payload)
            self._buffer += encode_frame(code, payload, chain)
        self._chain = chain
        self._pending.clear()

    def _commit(self, *, wait: bool) -> None:
        """Write and sync the buffered frames: now (``wait``) or on the sync thread.

        At most one background commit is in flight; commits reach the file in
        order.  An I/O error of a background commit is raised here, at the next
        commit or flush.
        """
        self._encode_pending()
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()
        if wait:
            _write_and_sync(self._fd, data)
            if self._state.records != self._heads_count:  # export the durable head
                _write_and_sync(self._heads_fd, format_line(self._state.records, self._chain.hex()))
                self._heads_count = self._state.records
        elif data:
            if self._syncer is None:
                from concurrent.futures import ThreadPoolExecutor

                self._syncer = ThreadPoolExecutor(1, thread_name_prefix="dpverify-ledger")
            self._inflight = self._syncer.submit(_write_and_sync, self._fd, data)

    def flush(self) -> None:
        """Write and sync everything appended so far (durable on return).

        Uses ``fdatasync`` where available: it flushes the data and the file
        size (all an append needs), skipping timestamps.  Then appends the
        record count and chain head to the heads file (if records were added).
        """
        if self._closed:
            raise LedgerError(f"{self.path}: the ledger writer is closed")
        self._commit(wait=True)

    def close(self, seal: Seal | None = None) -> None:
        """Flush, optionally append ``seal`` (the run finished), release the lock.

        Raises:
            InvalidArgument: ``seal`` counts do not match the ledger (nothing
                is closed then).
        """
        if self._closed:
            return
        if seal is not None:
            if not isinstance(seal, Seal):
                raise InvalidArgument(f"seal={type(seal).__name__} must be a Seal")
            self._append(seal)
        try:
            self.flush()
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._heads_fd >= 0:
            os.close(self._heads_fd)
            self._heads_fd = -1
        self._lock.release()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave buffered records behind
        if getattr(self, "_closed", True) is False:
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"LedgerWriter(path={str(self.path)!r}, next_step={self.next_step})"


_TOKEN = object()
_datasync = getattr(os, "fdatasync", os.fsync)


def _write_and_sync(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    _datasync(fd)


def _check_widths(step: Step) -> None:
    """Refuse now what the binary step layout cannot hold (encoding happens later)."""
    if step.step >= 1 << 63:
        raise InvalidArgument(f"step={step.step} must be < 2**63")
    for name in ("noise_draws", "num_clipped", "physical_batches", "num_nonfinite"):
        value = getattr(step, name)
        if value is not None and value >= 1 << 64:
            raise InvalidArgument(f"{name}={value} must be < 2**64")
