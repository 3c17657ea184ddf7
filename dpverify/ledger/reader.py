"""Reading a ledger: stream its records, or load it whole, verifying as it goes.

Every read verifies framing checksums, the hash chain, payloads, the record
grammar (:mod:`dpverify.ledger._sequence`), the manifest, and the chain heads
exported to ``ledger/heads`` (:mod:`dpverify.ledger._heads`) when that file
exists: a head that differs, or records missing below an exported count, is
corruption.  A torn tail —
the writer died mid-record — is not an error: the complete prefix is returned
and its size reported.

Example:
    >>> from dpverify.ledger import read_ledger          # doctest: +SKIP
    >>> ledger = read_ledger("runs/demo")                 # doctest: +SKIP
    >>> ledger.header.sampling_rate, len(ledger.steps)    # doctest: +SKIP
    (0.01, 1000)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

from dpverify.errors import LedgerCorrupt, UnusableInput
from dpverify.ledger._files import (
    RECORDS_NAME,
    check_manifest,
    require_complete,
    resolve_ledger_path,
)
from dpverify.ledger._framing import GENESIS, Frame, FrameScanner
from dpverify.ledger._heads import HEADS_NAME, Commitment, read_heads
from dpverify.ledger._payload import (
    TYPE_CODES,
    PayloadError,
    decode_payload,
    make_step,
    step_fields_and_block,
)
from dpverify.ledger._sequence import SequenceState
from dpverify.ledger.codec import CodecError, decode_indices, decode_many
from dpverify.ledger.records import Checkpoint, Record, Resume, RunHeader, Seal, Step

__all__ = ["Ledger", "LedgerScan", "iter_records", "iter_steps", "read_ledger"]


class LedgerScan:
    """Streaming, verifying iteration over a ledger's records.

    Iterate it for the records (each iteration starts afresh); afterwards
    ``head`` (hex chain head), ``torn_tail_bytes``, ``end_offset`` and
    ``state`` (the grammar state: header, steps, sealed) describe what was read.

    Args:
        path: ledger directory or run directory.
        heads: a heads file to cross-check instead of ``ledger/heads`` (e.g. a
            copy kept elsewhere); then it must exist.

    Raises:
        UnusableInput: on construction, the path is missing or not a ledger
            (or ``heads`` is given and missing).
        LedgerCorrupt: during iteration, naming the first bad record.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, heads: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = resolve_ledger_path(path)
        self._heads_path = Path(heads) if heads is not None else None
        if self._heads_path is not None and self._heads_path.is_dir():
            raise UnusableInput(
                f"{self._heads_path} is a directory; pass the heads file itself "
                "(a copy of LEDGER/heads)"
            )
        if self._heads_path is not None and not self._heads_path.is_file():
            raise UnusableInput(f"{self._heads_path}: no such heads file")
        self._scanner = FrameScanner(self.path / RECORDS_NAME)
        self.state = SequenceState()
        self._head = GENESIS
        self._commitments: dict[int, list[Commitment]] = {}
        self.heads_checked = 0
        self.frame_info: tuple[int, bytes, bytes] | None = None

    @property
    def head(self) -> str:
        """Hex chain head of the records accepted so far."""
        return self._head.hex()

    @property
    def torn_tail_bytes(self) -> int:
        """Bytes after the last complete record (0 for a clean end)."""
        return self._scanner.torn_tail_bytes

    @property
    def end_offset(self) -> int:
        """File offset just past the last complete record."""
        return self._scanner.end_offset

    @property
    def count(self) -> int:
        """Frames whose checksum and chain verified."""
        return self._scanner.count

    def __iter__(self) -> Iterator[Record]:
        require_complete(self.path)
        self._scanner = FrameScanner(self.path / RECORDS_NAME)  # each pass starts afresh
        self.state = SequenceState()
        self._head = GENESIS
        self._load_heads()
        pending: list[Frame] = []
        try:
            for frame in self._scanner:
                pending.append(frame)
                if len(pending) >= _BATCH or frame.code != _STEP_CODE:
                    batch, pending = pending, []  # a bad record in it is reported once
                    yield from self._accept(batch)
        except LedgerCorrupt:
            yield from self._accept(pending)  # an earlier bad record wins
            raise
        yield from self._accept(pending)
        if self._scanner.count == 0:
            bad = check_manifest(self.path, None)
            raise LedgerCorrupt(
                bad or f"{self.path}: records file holds no run header", record_index=0
            )
        self._check_heads_complete()

    def _load_heads(self) -> None:
        path = self._heads_path or self.path / HEADS_NAME
        lines = read_heads(path, required=self._heads_path is not None)
        self._commitments = {}
        for c in lines:
            self._commitments.setdefault(c.count, []).append(c)
        self.heads_checked = 0

    def _check_head(self, frame: Frame) -> None:
        """The chain value after ``frame`` against the heads lines for that count."""
        count = frame.index + 1
        for c in self._commitments.get(count, ()):
            if c.head != frame.chain.hex():
                raise LedgerCorrupt(
                    f"record {frame.index}: heads file line {c.line} commits to head "
                    f"{c.head[:16]}... after {count} records, but the ledger's head after "
                    f"{count} records is {frame.chain.hex()[:16]}... (records rewritten)",
                    record_index=frame.index,
                )
            self.heads_checked += 1

    def _check_heads_complete(self) -> None:
        """No exported count beyond the records present (a cut at a frame boundary)."""
        have = self.state.records
        beyond = [c for cs in self._commitments.values() for c in cs if c.count > have]
        if beyond:
            c = max(beyond, key=lambda c: c.count)
            raise LedgerCorrupt(
                f"record {have}: heads file line {c.line} commits to {c.count} records, but "
                f"the ledger holds only {have} complete records (records removed from the end)",
                record_index=have,
            )

    def _accept(self, frames: list[Frame]) -> Iterator[Record]:
        state = self.state
        for frame, record in zip(frames, _decode_frames(frames), strict=True):
            if isinstance(record, PayloadError):
                raise LedgerCorrupt(f"record {frame.index}: {record}", record_index=frame.index)
            problem = state.problem(record)
            if problem is not None:
                raise LedgerCorrupt(f"record {frame.index}: {problem}", record_index=frame.index)
            if self._commitments:
                self._check_head(frame)
            if frame.index == 0:
                bad = check_manifest(self.path, record)  # type: ignore[arg-type]
                if bad is not None:
                    raise LedgerCorrupt(bad, record_index=0)
            state.accept(record)
            #: (file offset, chain value before, chain value after) of the record just yielded
            self.frame_info = (frame.offset, self._head, frame.chain)
            self._head = frame.chain
            yield record


_BATCH = 256
_STEP_CODE = TYPE_CODES[Step]


def _decode_frames(frames: list[Frame]) -> list[Record | PayloadError]:
    """Decode frames; step index blocks in one batch.  Errors are returned in place."""
    out: list[Record | PayloadError | None] = [None] * len(frames)
    step_slots: list[int] = []
    fields: list[dict] = []
    blocks: list[memoryview] = []
    for i, frame in enumerate(frames):
        try:
            if frame.code == _STEP_CODE:
                f, block = step_fields_and_block(frame.payload)
                step_slots.append(i)
                fields.append(f)
                blocks.append(block)
            else:
                out[i] = decode_payload(frame.code, frame.payload)
        except PayloadError as exc:
            out[i] = exc
    if blocks:
        try:
            arrays: list = decode_many(blocks)
        except CodecError:
            arrays = []
            for block in blocks:
                try:
                    arrays.append(decode_indices(block))
                except CodecError as exc:
                    arrays.append(PayloadError(f"bad index block: {exc}"))
        for slot, f, arr in zip(step_slots, fields, arrays, strict=True):
            if isinstance(arr, PayloadError):
                out[slot] = arr
                continue
            try:
                out[slot] = make_step(f, arr)
            except PayloadError as exc:
                out[slot] = exc
    return out  # type: ignore[return-value]


def iter_records(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Stream the records of the ledger at ``path`` (ledger dir or run dir), verified.

    Raises:
        UnusableInput: missing path or not a ledger.
        LedgerCorrupt: naming the first bad record.
    """
    yield from LedgerScan(path)


def iter_steps(path: str | os.PathLike[str]) -> Iterator[Step]:
    """Stream the :class:`Step` records (every execution, repeats after resumes included)."""
    for record in LedgerScan(path):
        if isinstance(record, Step):
            yield record


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Ledger:
    """A whole ledger in memory, verified.

    Attributes:
        path: the ledger directory.
        header: the run header (first record).
        records: every record in order, header included.
        steps: every executed step in order (repeats after resumes included).
        resumes: the :class:`Resume` records.
        checkpoints: the :class:`Checkpoint` records.
        seal: the :class:`Seal` record, or ``None`` if the run was not sealed.
        head: hex SHA-256 chain head (the ledger's public commitment).
        torn_tail_bytes: bytes of an incomplete final record (0 when clean).
    """

    path: Path
    header: RunHeader
    records: tuple[Record, ...]
    steps: tuple[Step, ...]
    resumes: tuple[Resume, ...]
    checkpoints: tuple[Checkpoint, ...]
    seal: Seal | None
    head: str
    torn_tail_bytes: int

    @property
    def sealed(self) -> bool:
        """Whether the run was sealed (finished cleanly)."""
        return self.seal is not None

    def __repr__(self) -> str:
        return (
            f"Ledger(path={str(self.path)!r}, steps={len(self.steps)}, "
            f"sealed={self.sealed}, head={self.head[:16]}...)"
        )


def read_ledger(path: str | os.PathLike[str]) -> Ledger:
    """Read and verify the whole ledger at ``path`` (ledger dir or run dir).

    Raises:
        UnusableInput: missing path or not a ledger.
        LedgerCorrupt: naming the first bad record.
    """
    scan = LedgerScan(path)
    records = tuple(scan)
    header = records[0]
    assert isinstance(header, RunHeader)
    seal = records[-1] if isinstance(records[-1], Seal) else None
    return Ledger(
        path=scan.path,
        header=header,
        records=records,
        steps=tuple(r for r in records if isinstance(r, Step)),
        resumes=tuple(r for r in records if isinstance(r, Resume)),
        checkpoints=tuple(r for r in records if isinstance(r, Checkpoint)),
        seal=seal,
        head=scan.head,
        torn_tail_bytes=scan.torn_tail_bytes,
    )
