"""A ledger read in one streaming pass, its index arrays left on disk.

:func:`read_outline` verifies a ledger exactly as :func:`~dpverify.ledger.read_ledger`
does (framing, checksums, hash chain, grammar, manifest, exported heads) in
one pass, hands every decoded :class:`~dpverify.ledger.Step` — indices
included — to a callback, and keeps only an *outline*: every record, with each
step's index array replaced by a :class:`LazyIndices` that knows the batch
size and largest index, and re-reads the array from the file on demand.

The outline is a drop-in for :class:`~dpverify.ledger.Ledger` (same
attributes) in O(records) memory instead of O(recorded indices): at
jax_privacy's ImageNet scale (1.2·10⁹ indices, 9 GB as int64) a few tens of
megabytes.  A re-read array is verified against the hash chain value the pass
accepted (``SHA-256(h_{i−1} ‖ type ‖ payload) = h_i``), so a file changed after
the pass cannot substitute other indices.

Example:
    >>> from dpverify.ledger.outline import read_outline   # doctest: +SKIP
    >>> sizes = []                                          # doctest: +SKIP
    >>> ledger = read_outline("runs/demo", on_record=sizes.append)  # doctest: +SKIP
    >>> ledger.steps[0].indices.size == sizes[1].indices.size   # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dpverify.errors import LedgerCorrupt
from dpverify.ledger._files import RECORDS_NAME
from dpverify.ledger._framing import chain_next
from dpverify.ledger._payload import decode_payload
from dpverify.ledger.reader import Ledger, LedgerScan
from dpverify.ledger.records import Checkpoint, Resume, RunHeader, Seal, Step

__all__ = ["LazyIndices", "read_outline"]

_HEADER = 9  # length u32, type u8, header CRC u32 (docs/ledger-format.md §3)


class LazyIndices:
    """Stands in for a step's index array: size and last index known, the array on disk.

    ``size``, ``len()``, ``shape``, ``ndim``, ``dtype`` and ``[-1]`` need no
    read; anything else (``np.asarray``, slicing, iteration, array methods)
    re-reads the record, checks it against the accepted chain value, and
    decodes it (not cached: memory stays O(1) per record).
    """

    __slots__ = ("_chain", "_last", "_offset", "_path", "_prev", "size")

    def __init__(
        self, *, path: Path, offset: int, prev: bytes, chain: bytes, size: int, last: int
    ) -> None:
        self._path, self._offset, self._prev, self._chain = path, offset, prev, chain
        self.size = int(size)
        self._last = int(last)

    shape = property(lambda self: (self.size,))
    ndim = 1
    dtype = np.dtype(np.int64)

    def __len__(self) -> int:
        return self.size

    def load(self) -> np.ndarray:
        """The verified index array of this step, read from the records file."""
        with open(self._path, "rb") as f:
            f.seek(self._offset)
            head = f.read(_HEADER)
            length, code = int.from_bytes(head[:4], "little"), head[4]
            payload = f.read(length)
        if len(payload) != length or chain_next(self._prev, code, payload) != self._chain:
            raise LedgerCorrupt(
                f"{self._path}: the record at offset {self._offset} changed after it was "
                "verified (hash chain mismatch on re-read)"
            )
        step = decode_payload(code, payload)
        assert isinstance(step, Step)
        return np.asarray(step.indices)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.load()
        return arr if dtype is None else arr.astype(dtype)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int) and key == -1 and self.size:
            return np.int64(self._last)
        return self.load()[key]

    def __iter__(self) -> Any:
        return iter(self.load())

    def __getattr__(self, name: str) -> Any:  # array methods (astype, tolist, ...) on the re-read array
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)

    def __repr__(self) -> str:  # never print indices
        return f"LazyIndices(size={self.size})"


def _outline_step(step: Step, lazy: LazyIndices) -> Step:
    light = copy.copy(step)  # the same fields, no re-validation
    object.__setattr__(light, "indices", lazy)
    return light


def read_outline(
    path: str | os.PathLike[str], *, on_record: Callable[[Any], None] | None = None
) -> Ledger:
    """Read and verify the ledger at ``path`` in one pass, keeping an outline.

    Args:
        path: ledger directory or run directory.
        on_record: called with every verified record (steps with their
            indices), in ledger order, as it is read.

    Returns:
        A :class:`~dpverify.ledger.Ledger` whose step records carry
        :class:`LazyIndices`.

    Raises:
        UnusableInput: missing path or not a ledger.
        LedgerCorrupt: naming the first bad record.
    """
    scan = LedgerScan(path)
    file = scan.path / RECORDS_NAME
    records: list[Any] = []
    for record in scan:
        if on_record is not None:
            on_record(record)
        if isinstance(record, Step):
            assert scan.frame_info is not None
            offset, prev, chain = scan.frame_info
            idx = record.indices
            lazy = LazyIndices(
                path=file, offset=offset, prev=prev, chain=chain,
                size=idx.size, last=int(idx[-1]) if idx.size else -1,
            )  # fmt: skip
            record = _outline_step(record, lazy)
        records.append(record)
    header = records[0]
    assert isinstance(header, RunHeader)
    seal = records[-1] if isinstance(records[-1], Seal) else None
    return Ledger(
        path=scan.path,
        header=header,
        records=tuple(records),
        steps=tuple(r for r in records if isinstance(r, Step)),
        resumes=tuple(r for r in records if isinstance(r, Resume)),
        checkpoints=tuple(r for r in records if isinstance(r, Checkpoint)),
        seal=seal,
        head=scan.head,
        torn_tail_bytes=scan.torn_tail_bytes,
    )


