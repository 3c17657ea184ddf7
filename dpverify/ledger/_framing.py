"""Record framing and the SHA-256 hash chain of the records file.

File layout (docs/ledger-format.md §3)::

    MAGIC (8 bytes) then frames, each:
      length  u32 LE   payload length in bytes
      type    u8       record type code
      hcrc    u32 LE   CRC-32 of the 5 bytes above
      payload length bytes
      chain   32 bytes h_i = SHA-256(h_{i-1} ‖ type ‖ payload), h_{-1} = GENESIS
      crc     u32 LE   CRC-32 of every preceding byte of the frame

Scanning distinguishes a *torn tail* (the file ends inside a frame whose
header is intact, or inside a frame header, or the rest of the file is zero
bytes: the writer died mid-write; the complete prefix is valid) from
*corruption* (a complete frame whose checksum, type, chain value or payload is
wrong), after LevelDB's log format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dpverify.errors import LedgerCorrupt, UnusableInput

__all__ = [
    "FRAME_OVERHEAD",
    "GENESIS",
    "MAGIC",
    "Frame",
    "FrameScanner",
    "chain_next",
    "encode_frame",
]

MAGIC = b"DPVLEDG\x01"
GENESIS = hashlib.sha256(b"dpverify ledger v1").digest()
_HEAD = struct.Struct("<IB")
_U32 = struct.Struct("<I")
_HEADER_SIZE = _HEAD.size + 4  # length, type, hcrc
_TRAILER_SIZE = 32 + 4  # chain, crc
FRAME_OVERHEAD = _HEADER_SIZE + _TRAILER_SIZE
MAX_PAYLOAD = 1 << 30
_VALID_TYPES = frozenset({1, 2, 3, 4, 5})
_CHUNK = 1 << 22


def chain_next(prev: bytes, code: int, payload: bytes | memoryview) -> bytes:
    """h_i = SHA-256(h_{i-1} ‖ type byte ‖ payload)."""
    h = hashlib.sha256(prev)
    h.update(bytes((code,)))
    h.update(payload)
    return h.digest()


def encode_frame(code: int, payload: bytes, chain: bytes) -> bytes:
    """One frame (header, payload, chain value, CRC)."""
    head = _HEAD.pack(len(payload), code)
    head += _U32.pack(zlib.crc32(head))
    body = head + payload + chain
    return body + _U32.pack(zlib.crc32(body))


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """A verified frame: record ``index``, file ``offset``, type ``code``, ``payload``, ``chain``."""

    index: int
    offset: int
    code: int
    payload: bytes
    chain: bytes


class FrameScanner:
    """Iterate the verified frames of a records file, streaming.

    After iteration: ``end_offset`` (end of the last complete frame),
    ``torn_tail_bytes`` (bytes after it, 0 for a clean end), ``head`` (chain
    value of the last frame, or GENESIS) and ``count``.

    Raises:
        LedgerCorrupt: naming the first bad record (``record_index``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.end_offset = len(MAGIC)
        self.torn_tail_bytes = 0
        self.head = GENESIS
        self.count = 0

    def __iter__(self) -> Iterator[Frame]:
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise UnusableInput(f"{self.path}: cannot read ({exc.strerror})") from None
        with f:
            yield from self._scan(f)

    def _scan(self, f: BinaryIO) -> Iterator[Frame]:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise LedgerCorrupt(
                f"{self.path.name}: bad magic bytes (not a dpverify records file, or damaged)",
                record_index=0,
            )
        buf = b""
        pos = 0
        offset = len(MAGIC)  # file offset of buf[pos]
        eof = False
        prev = GENESIS
        index = 0
        while True:
            avail = len(buf) - pos
            need = _HEADER_SIZE
            if avail >= _HEADER_SIZE:
                length, code = _HEAD.unpack_from(buf, pos)
                (hcrc,) = _U32.unpack_from(buf, pos + _HEAD.size)
                if hcrc != zlib.crc32(buf[pos : pos + _HEAD.size]):
                    if not eof:
                        buf = buf[pos:] + f.read()
                        pos, eof = 0, True
                    if not any(buf[pos:]):
                        break  # zero-filled tail: the writer died
                    raise LedgerCorrupt(
                        f"record {index} (offset {offset}): frame header checksum mismatch",
                        record_index=index,
                    )
                if length > MAX_PAYLOAD:
                    raise LedgerCorrupt(
                        f"record {index} (offset {offset}): implausible length {length}",
                        record_index=index,
                    )
                need = _HEADER_SIZE + length + _TRAILER_SIZE
                if avail >= need:
                    end = pos + need
                    (crc,) = _U32.unpack_from(buf, end - 4)
                    if crc != zlib.crc32(memoryview(buf)[pos : end - 4]):
                        raise LedgerCorrupt(
                            f"record {index} (offset {offset}): checksum mismatch",
                            record_index=index,
                        )
                    if code not in _VALID_TYPES:
                        raise LedgerCorrupt(
                            f"record {index} (offset {offset}): unknown record type {code}",
                            record_index=index,
                        )
                    payload = buf[pos + _HEADER_SIZE : end - _TRAILER_SIZE]
                    stored = buf[end - _TRAILER_SIZE : end - 4]
                    chain = chain_next(prev, code, payload)
                    if chain != stored:
                        raise LedgerCorrupt(
                            f"record {index} (offset {offset}): hash chain broken "
                            "(a record was dropped, duplicated, reordered, altered or spliced in)",
                            record_index=index,
                        )
                    yield Frame(index, offset, code, payload, chain)
                    prev = chain
                    index += 1
                    pos = end
                    offset += need
                    self.end_offset, self.head, self.count = offset, prev, index
                    continue
            if eof:
                break
            chunk = f.read(max(_CHUNK, need - avail))
            if not chunk:
                eof = True
            buf = buf[pos:] + chunk
            pos = 0
        self.torn_tail_bytes = len(buf) - pos
