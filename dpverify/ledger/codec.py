"""Index codec: a step's sorted sample indices in close to N·H(q) bits.

Under Poisson sampling with rate q over N examples, a step's index set has
entropy N·H(q) bits (H the binary entropy), about ``log2(1/q) + log2(e)`` bits
per sampled index when q is small.  The gaps between consecutive indices are
geometric, and Golomb–Rice coding of geometric values comes within a few
percent of their entropy (Gallager & van Voorhis 1975, "Optimal source codes
for geometrically distributed integer alphabets", IEEE Trans. Inf. Theory 21).

A *block* encodes one sorted, strictly increasing array of non-negative
integers.  Its first byte names the codec:

* ``0`` empty: nothing follows.
* ``1`` Rice: ``u8 k`` (0 ≤ k ≤ 56), ``varint L`` (≥ 1), then the *low part*:
  the ``L`` values ``gap & (2^k − 1)``, ``k`` bits each, MSB-first, zero
  padded to a byte boundary (``ceil(L·k/8)`` bytes); then the *high part*: for
  each gap, ``gap >> k`` zero bits followed by a one bit, MSB-first, zero
  padded to a byte boundary; the block ends with the byte holding the last one
  bit.  Gaps: ``g_0 = x_0``, ``g_j = x_j − x_{j−1} − 1``.
* ``2`` bitmap: ``varint U`` (= last index + 1), then ``ceil(U/8)`` bytes; bit
  ``i`` (MSB-first) is set iff ``i`` is in the set.  Wins when q is large.
* ``3`` packed gaps: ``u8 w`` (1 ≤ w ≤ 63), ``varint L``, then ``L`` gaps of
  ``w`` bits each, MSB-first, zero padded.  A bounded fallback for sets whose
  gaps are far from geometric.

``varint`` is unsigned LEB128.  The encoder picks the shortest codec (Rice
parameter chosen per block from the mean gap, after Kiely 2004).  :func:`encode_many` and
:func:`decode_many` handle many blocks in one vectorised numpy pass (the
writer's and the auditor's fast paths); :func:`encode_indices` and
:func:`decode_indices` are the one-block forms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dpverify.errors import InvalidArgument

__all__ = [
    "CODEC_BITMAP",
    "CODEC_EMPTY",
    "CODEC_PACKED",
    "CODEC_RICE",
    "CodecError",
    "decode_indices",
    "decode_many",
    "encode_indices",
    "encode_many",
]

CODEC_EMPTY = 0
CODEC_RICE = 1
CODEC_BITMAP = 2
CODEC_PACKED = 3

MAX_RICE_K = 56
_MAX_BITMAP_UNIVERSE = 1 << 32


class CodecError(ValueError):
    """A block is malformed (the ledger reader reports it as corruption)."""


# ---------------------------------------------------------------- varints


def varint(value: int) -> bytes:
    """Unsigned LEB128 encoding of ``value``."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 at ``pos``; returns ``(value, next_pos)``."""
    value = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise CodecError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CodecError("varint too long")


# ---------------------------------------------------------------- bit helpers


def fixed_bits(values: np.ndarray, width: int) -> np.ndarray:
    """The bits of ``values`` (``width`` bits each, MSB-first) as a 0/1 uint8 array."""
    if width == 0 or values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    return bits.astype(np.uint8).ravel()


def read_fixed(body: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """``count`` MSB-first fields of ``width`` bits (1..63) from ``body``, as uint64."""
    bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8))[: count * width]
    if width <= 52:  # exact in float64: one BLAS matrix-vector product
        weights = np.exp2(np.arange(width - 1, -1, -1, dtype=np.float64))
        return (bits.reshape(count, width).astype(np.float64) @ weights).astype(np.uint64)
    out = np.zeros(count, dtype=np.uint64)
    for column in bits.reshape(count, width).T:
        out = (out << np.uint64(1)) | column.astype(np.uint64)
    return out


def gaps_to_indices(gaps: np.ndarray) -> np.ndarray:
    """x_j = Σ_{i≤j} (g_i + 1) − 1, refusing overflow past int64."""
    if gaps.size and int(gaps.max()) >= (1 << 62):
        total = sum(int(g) + 1 for g in gaps.tolist()) - 1
        if total >= (1 << 63):
            raise CodecError("index overflow")
    return np.cumsum(gaps.astype(np.int64) + 1) - 1


_LOG_GOLDEN_CONJUGATE = math.log((math.sqrt(5.0) - 1.0) / 2.0)  # ln(φ − 1) ≈ −0.4812


def rice_parameter(mean_gap: float) -> int:
    """The optimal Rice parameter for geometric gaps with mean ``mean_gap``.

    k* = max(0, 1 + ⌊log₂(ln(φ−1) / ln(1−p))⌋) with 1 − p = μ/(μ+1) and φ the
    golden ratio (Kiely 2004, "Selecting the Golomb parameter in Rice coding",
    IPN Progress Report 42-159), capped at ``MAX_RICE_K``.
    """
    if mean_gap <= 0.0:
        return 0
    ratio = -_LOG_GOLDEN_CONJUGATE / math.log1p(1.0 / mean_gap)
    return min(MAX_RICE_K, max(0, 1 + math.floor(math.log2(ratio))))


# ---------------------------------------------------------------- one block


def _gaps(x: np.ndarray) -> np.ndarray:
    gaps = np.empty(x.size, dtype=np.int64)
    gaps[0] = x[0]
    np.subtract(x[1:], x[:-1], out=gaps[1:])
    gaps[1:] -= 1
    return gaps


def _check_sorted(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or (x.size and not np.issubdtype(x.dtype, np.integer)):
        raise InvalidArgument(f"indices must be a 1-D integer array, got shape {x.shape}")
    x = x.astype(np.int64, copy=False)
    if x.size and (x[0] < 0 or np.any(x[1:] <= x[:-1])):
        raise InvalidArgument("indices must be non-negative and strictly increasing")
    return x


def _rice_block(gaps: np.ndarray, k: int) -> bytes:
    n = gaps.size
    high = gaps >> k
    ones = np.cumsum(high + 1) - 1
    unary = np.zeros(int(ones[-1]) + 1, dtype=np.uint8)
    unary[ones] = 1
    low = np.packbits(fixed_bits(gaps & ((1 << k) - 1), k)).tobytes()
    return bytes((CODEC_RICE, k)) + varint(n) + low + np.packbits(unary).tobytes()


def encode_indices(indices: np.ndarray) -> bytes:
    """Encode one sorted, strictly increasing array of non-negative indices.

    The shortest of Rice (k from the mean gap, :func:`rice_parameter`), bitmap
    and packed gaps is chosen (see the module docstring for the layouts).

    Raises:
        InvalidArgument: indices not 1-D integers, negative, unsorted or repeated.
    """
    x = _check_sorted(indices)
    n = int(x.size)
    if n == 0:
        return bytes((CODEC_EMPTY,))
    gaps = _gaps(x)
    last = int(x[-1])
    k = rice_parameter((last - n + 1) / n)
    bits = (n * k + 7) // 8 * 8 + (n + int(np.sum(gaps >> k)) + 7) // 8 * 8
    candidates = [(bits, CODEC_RICE, k)]
    width = max(1, int(gaps.max()).bit_length())
    candidates.append(((n * width + 7) // 8 * 8, CODEC_PACKED, width))
    if last < _MAX_BITMAP_UNIVERSE:
        candidates.append(((last + 8) // 8 * 8, CODEC_BITMAP, 0))
    _, codec, param = min(candidates)
    if codec == CODEC_RICE:
        return _rice_block(gaps, param)
    if codec == CODEC_PACKED:
        body = np.packbits(fixed_bits(gaps, param)).tobytes()
        return bytes((CODEC_PACKED, param)) + varint(n) + body
    bitmap = np.zeros(last + 1, dtype=np.uint8)
    bitmap[x] = 1
    return bytes((CODEC_BITMAP,)) + varint(last + 1) + np.packbits(bitmap).tobytes()


def decode_indices(block: bytes | memoryview) -> np.ndarray:
    """Decode one block into a sorted int64 array (inverse of :func:`encode_indices`).

    Raises:
        CodecError: the block is malformed (length, codec byte, padding, ...).
    """
    if len(block) == 0:
        raise CodecError("empty index block")
    codec = block[0]
    if codec == CODEC_EMPTY:
        if len(block) != 1:
            raise CodecError("trailing bytes after an empty index block")
        return np.zeros(0, dtype=np.int64)
    if codec == CODEC_BITMAP:
        universe, pos = read_varint(block, 1)
        if not 0 < universe <= _MAX_BITMAP_UNIVERSE or len(block) - pos != (universe + 7) // 8:
            raise CodecError("bitmap length does not match its universe")
        x = np.flatnonzero(
            np.unpackbits(np.frombuffer(block, dtype=np.uint8, offset=pos)).view(bool)
        )
        if x.size == 0 or x[-1] != universe - 1:
            raise CodecError("bitmap padding or last bit inconsistent with its universe")
        return x.astype(np.int64)
    if codec not in (CODEC_RICE, CODEC_PACKED):
        raise CodecError(f"unknown index codec {codec}")
    if len(block) < 2:
        raise CodecError("truncated index block")
    param = block[1]
    n, pos = read_varint(block, 2)
    body = memoryview(block)[pos:]
    if n == 0:
        raise CodecError("index block with zero entries (must use the empty codec)")
    if codec == CODEC_PACKED:
        if not 1 <= param <= 63 or len(body) != (n * param + 7) // 8:
            raise CodecError("packed block length does not match its header")
        return gaps_to_indices(read_fixed(body, n, param))
    k = param
    low_bytes = (n * k + 7) // 8
    if k > MAX_RICE_K or len(body) <= low_bytes:
        raise CodecError("Rice block shorter than its header says")
    ones = np.flatnonzero(
        np.unpackbits(np.frombuffer(body, dtype=np.uint8, offset=low_bytes)).view(bool)
    )
    if ones.size != n or int(ones[-1]) // 8 != len(body) - low_bytes - 1:
        raise CodecError("Rice high part inconsistent with the entry count")
    high = np.diff(ones, prepend=-1) - 1
    gaps = high.astype(np.uint64) << np.uint64(k)
    if k:
        gaps |= read_fixed(body[:low_bytes], n, k)
    return gaps_to_indices(gaps)


# ---------------------------------------------------------------- many blocks


#: Indices per vectorised pass of :func:`encode_many` / :func:`decode_many`.
#: The batch code makes a dozen passes over arrays of this length; at 2¹⁷
#: (1 MiB of int64) they stay in the CPU cache, which measured about 3× faster
#: than one pass over 10⁷ indices (benchmarks/audit.py --scale imagenet).
CHUNK_INDICES = 1 << 17


def _chunks(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive ``(lo, hi)`` ranges of items holding about :data:`CHUNK_INDICES` in all."""
    out, lo, acc = [], 0, 0
    for i, n in enumerate(sizes):
        acc += n
        if acc >= CHUNK_INDICES:
            out.append((lo, i + 1))
            lo, acc = i + 1, 0
    if lo < len(sizes):
        out.append((lo, len(sizes)))
    return out


def encode_many(arrays: Sequence[np.ndarray], *, validated: bool = False) -> list[bytes]:
    """Encode many index arrays; equal to ``[encode_indices(a) for a in arrays]``.

    Rice blocks (the common case) are encoded together in a fixed number of
    numpy operations per chunk of about :data:`CHUNK_INDICES` indices; other
    blocks fall back to :func:`encode_indices`.  ``validated=True`` skips the
    per-array shape and dtype checks (for arrays taken from
    :class:`~dpverify.ledger.records.Step`, already checked).
    """
    from dpverify.ledger._rice_batch import encode_rice_many

    arrays = list(arrays)
    out: list[bytes] = []
    for lo, hi in _chunks([int(np.size(a)) for a in arrays]):
        out += encode_rice_many(arrays[lo:hi], encode_indices, validated=validated)
    return out


def decode_many(blocks: Sequence[bytes | memoryview]) -> list[np.ndarray]:
    """Decode many blocks; equal to ``[decode_indices(b) for b in blocks]`` (same errors).

    Rice blocks are decoded together in a fixed number of numpy operations
    per distinct Rice parameter and chunk of blocks (about
    :data:`CHUNK_INDICES` indices, estimated from the block sizes at about one
    byte per index), whatever their count.
    """
    from dpverify.ledger._rice_batch import decode_rice_many

    blocks = list(blocks)
    out: list[np.ndarray] = []
    for lo, hi in _chunks([len(b) for b in blocks]):
        out += decode_rice_many(blocks[lo:hi], decode_indices)
    return out
