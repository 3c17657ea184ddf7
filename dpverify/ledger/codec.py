"""Index codec: a step's sorted sample indices in close to N·H(q) bits.

Under Poisson sampling with rate q over N examples, a step's index set has
entropy N·H(q) bits (H the binary entropy), i.e. about ``log2(1/q) + log2(e)``
bits per sampled index when q is small.  The gaps between consecutive indices
are geometric, and Golomb–Rice coding of geometric values is within a few
percent of their entropy (Gallager & van Voorhis 1975, "Optimal source codes
for geometrically distributed integer alphabets", IEEE Trans. Inf. Theory).

A *block* encodes one sorted, strictly increasing array of non-negative
integers.  Its first byte is the codec:

* ``0`` empty: nothing follows.
* ``1`` Rice: ``u8 k``, ``varint L``, then one bit stream (MSB-first): the
  ``L`` low parts (``k`` bits each, gap & (2^k − 1)), immediately followed by
  the ``L`` high parts in unary (``gap >> k`` zero bits, then a one bit), then
  zero padding to a byte boundary.  Gaps: ``g_0 = x_0``, ``g_j = x_j − x_{j−1} − 1``.
* ``2`` bitmap: ``varint U`` (= last index + 1), then ``ceil(U/8)`` bytes; bit
  ``i`` (MSB-first) is set iff ``i`` is in the set.  Chosen when q is large.
* ``3`` packed gaps: ``u8 w``, ``varint L``, then ``L`` gaps of ``w`` bits each
  (MSB-first), zero padded.  A bounded-size fallback for pathological sets.

``varint`` is unsigned LEB128.  The encoder picks the smallest of the three.
Decoding is vectorised with numpy; :func:`decode_many` decodes many blocks in
one pass (the auditor's fast path), at tens of millions of indices per second.
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
]

CODEC_EMPTY = 0
CODEC_RICE = 1
CODEC_BITMAP = 2
CODEC_PACKED = 3

_MAX_INDEX = (1 << 63) - 1


class CodecError(ValueError):
    """A block is malformed (the caller turns this into ``LedgerCorrupt``)."""


# ---------------------------------------------------------------- varints


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
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


# ---------------------------------------------------------------- encoding


def _pack_fixed(values: np.ndarray, width: int) -> np.ndarray:
    """Bits of ``values`` (each ``width`` bits, MSB-first), as a uint8 0/1 array."""
    if width == 0 or values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    return bits.astype(np.uint8).ravel()


def _rice_cost(gaps: np.ndarray, k: int) -> int:
    return int(gaps.size) * (k + 1) + int(np.sum(gaps >> k))


def encode_indices(indices: np.ndarray) -> bytes:
    """Encode a sorted, strictly increasing int64 array of non-negative indices.

    Args:
        indices: 1-D integer array (already validated by :class:`Step`).

    Returns:
        The block bytes (see the module docstring for the layout).

    Raises:
        InvalidArgument: indices negative, unsorted or repeated.
    """
    x = np.asarray(indices, dtype=np.int64)
    n = int(x.size)
    if n == 0:
        return bytes([CODEC_EMPTY])
    gaps = np.empty(n, dtype=np.int64)
    gaps[0] = x[0]
    np.subtract(x[1:], x[:-1], out=gaps[1:])
    gaps[1:] -= 1
    if gaps.min() < 0:
        raise InvalidArgument("indices must be non-negative and strictly increasing")
    last = int(x[-1])
    total = last - n + 1  # sum of gaps
    mean = total / n
    k0 = max(0, math.floor(math.log2(mean * math.log(2.0))) if mean >= 1.0 else 0)
    k0 = min(k0, 56)
    best_k, best_cost = 0, None
    for k in (k0 - 1, k0, k0 + 1):
        if 0 <= k <= 56:
            cost = _rice_cost(gaps, k)
            if best_cost is None or cost < best_cost:
                best_k, best_cost = k, cost
    width = max(1, int(gaps.max()).bit_length())
    packed_cost = n * width
    bitmap_cost = last + 1 if last < (1 << 40) else None
    assert best_cost is not None
    choice = min(
        (best_cost, CODEC_RICE),
        (packed_cost + 8, CODEC_PACKED),  # one extra byte (w) vs Rice's k: same; tie → Rice
        (bitmap_cost if bitmap_cost is not None else _MAX_INDEX, CODEC_BITMAP),
    )[1]
    if choice == CODEC_BITMAP:
        bits = np.zeros(last + 1, dtype=np.uint8)
        bits[x] = 1
        return bytes([CODEC_BITMAP]) + _varint(last + 1) + np.packbits(bits).tobytes()
    if choice == CODEC_PACKED:
        body = np.packbits(_pack_fixed(gaps, width)).tobytes()
        return bytes([CODEC_PACKED, width]) + _varint(n) + body
    k = best_k
    high = gaps >> k
    ones = np.cumsum(high + 1) - 1  # position of each terminating one bit
    lowbits = _pack_fixed(gaps & ((1 << k) - 1), k)
    unary = np.zeros(int(ones[-1]) + 1, dtype=np.uint8)
    unary[ones] = 1
    body = np.packbits(np.concatenate((lowbits, unary))).tobytes()
    return bytes([CODEC_RICE, k]) + _varint(n) + body


# ---------------------------------------------------------------- decoding


def _read_fixed(packed: np.ndarray, bit_offsets: np.ndarray, width: int | np.ndarray) -> np.ndarray:
    """Read ``width``-bit MSB-first fields at ``bit_offsets`` (widths ≤ 57).

    ``packed`` must carry at least 8 bytes of zero padding after the data.
    Each field is read through an unaligned 64-bit big-endian window.
    """
    windows = np.ndarray(shape=(packed.size - 7,), dtype=">u8", buffer=packed.data, strides=(1,))
    words = windows[bit_offsets >> 3].astype(np.uint64)
    shift_left = (bit_offsets & 7).astype(np.uint64)
    width_u = np.asarray(width, dtype=np.uint64)
    return (words << shift_left) >> (np.uint64(64) - width_u)


def _read_wide(packed: np.ndarray, bit_offsets: np.ndarray, width: int) -> np.ndarray:
    if width <= 56:
        return _read_fixed(packed, bit_offsets, width)
    hi_w = width - 32
    hi = _read_fixed(packed, bit_offsets, hi_w)
    lo = _read_fixed(packed, bit_offsets + hi_w, 32)
    return (hi << np.uint64(32)) | lo


def _padded(body: bytes | memoryview) -> np.ndarray:
    out = np.zeros(len(body) + 8, dtype=np.uint8)
    out[: len(body)] = np.frombuffer(body, dtype=np.uint8)
    return out


def _finish(gaps: np.ndarray) -> np.ndarray:
    x = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if x.size and (x[-1] < 0 or np.any(gaps > np.uint64(_MAX_INDEX))):
        raise CodecError("index overflow")
    return x


def decode_indices(block: bytes | memoryview) -> np.ndarray:
    """Decode one block into a sorted int64 array (inverse of :func:`encode_indices`).

    Raises:
        CodecError: the block is malformed (wrong length, bad codec byte, ...).
    """
    if len(block) == 0:
        raise CodecError("empty index block")
    codec = block[0]
    if codec == CODEC_EMPTY:
        if len(block) != 1:
            raise CodecError("trailing bytes after empty index block")
        return np.zeros(0, dtype=np.int64)
    if codec == CODEC_BITMAP:
        universe, pos = _read_varint(block, 1)
        if universe == 0 or len(block) - pos != (universe + 7) // 8:
            raise CodecError("bitmap length does not match its universe")
        bits = np.unpackbits(np.frombuffer(block, dtype=np.uint8, offset=pos), count=None)
        x = np.flatnonzero(bits)
        if x.size == 0 or x[-1] != universe - 1:
            raise CodecError("bitmap padding or last bit inconsistent")
        return x.astype(np.int64)
    if codec == CODEC_PACKED:
        if len(block) < 2:
            raise CodecError("truncated packed block")
        width = block[1]
        n, pos = _read_varint(block, 2)
        if not 1 <= width <= 63 or n == 0 or len(block) - pos != (n * width + 7) // 8:
            raise CodecError("packed block length does not match its header")
        packed = _padded(block[pos:])
        offsets = np.arange(n, dtype=np.int64) * width
        return _finish(_read_wide(packed, offsets, width))
    if codec == CODEC_RICE:
        if len(block) < 2:
            raise CodecError("truncated Rice block")
        k = block[1]
        n, pos = _read_varint(block, 2)
        if k > 56 or n == 0:
            raise CodecError("bad Rice parameters")
        body = np.frombuffer(block, dtype=np.uint8, offset=pos)
        low_bits = n * k
        bits = np.unpackbits(body)
        ones = np.flatnonzero(bits[low_bits:])
        if ones.size != n or (low_bits + int(ones[-1]) + 8) // 8 != body.size:
            raise CodecError("Rice unary stream inconsistent with its length")
        high = ones - np.arange(n)
        high[1:] -= ones[:-1] - np.arange(n - 1)
        gaps = high.astype(np.uint64) << np.uint64(k)
        if k:
            offsets = np.arange(n, dtype=np.int64) * k
            gaps |= _read_fixed(_padded(body), offsets, k)
        return _finish(gaps)
    raise CodecError(f"unknown index codec {codec}")


def decode_many(blocks: Sequence[bytes | memoryview]) -> list[np.ndarray]:
    """Decode many blocks at once; Rice blocks share one vectorised pass.

    Equivalent to ``[decode_indices(b) for b in blocks]`` (same errors), but
    the Rice blocks — the common case — are concatenated and decoded with a
    fixed number of numpy operations, whatever their count.
    """
    out: list[np.ndarray | None] = [None] * len(blocks)
    rice: list[tuple[int, int, int, bytes | memoryview]] = []  # (slot, k, n, body)
    for i, block in enumerate(blocks):
        if len(block) >= 2 and block[0] == CODEC_RICE:
            k = block[1]
            n, pos = _read_varint(block, 2)
            if k > 56 or n == 0:
                raise CodecError("bad Rice parameters")
            rice.append((i, k, n, block[pos:]))
        else:
            out[i] = decode_indices(block)
    if rice:
        counts = np.array([r[2] for r in rice], dtype=np.int64)
        ks = np.array([r[1] for r in rice], dtype=np.int64)
        sizes = np.array([len(r[3]) for r in rice], dtype=np.int64)
        byte_start = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        joined = b"".join(bytes(r[3]) for r in rice)
        packed = np.zeros(len(joined) + 8, dtype=np.uint8)
        packed[: len(joined)] = np.frombuffer(joined, dtype=np.uint8)
        bits = np.unpackbits(packed[: len(joined)])
        # Blank each block's low-bit region so only unary terminators remain.
        low_bits = counts * ks
        starts = byte_start * 8
        total_low = int(low_bits.sum())
        if total_low:
            owner = np.repeat(np.arange(len(rice)), low_bits)
            within = np.arange(total_low) - np.repeat(np.cumsum(low_bits) - low_bits, low_bits)
            bits[starts[owner] + within] = 0
        ones = np.flatnonzero(bits)
        total = int(counts.sum())
        if ones.size != total:
            raise CodecError("Rice unary stream inconsistent with its length")
        block_of = np.repeat(np.arange(len(rice)), counts)
        first = np.cumsum(counts) - counts
        # Each block's unary stream must end inside its last byte.
        last_one = ones[first + counts - 1]
        if np.any(last_one // 8 != byte_start + sizes - 1) or np.any(
            ones[first] < starts + low_bits
        ):
            raise CodecError("Rice unary stream inconsistent with its length")
        prev = np.empty(total, dtype=np.int64)
        prev[1:] = ones[:-1]
        prev[first] = starts + low_bits - 1
        high = (ones - prev - 1).astype(np.uint64)
        k_each = ks[block_of]
        gaps = high << k_each.astype(np.uint64)
        pos_in_block = np.arange(total) - first[block_of]
        offsets = starts[block_of] + pos_in_block * k_each
        nonzero_k = k_each > 0
        if np.any(nonzero_k):
            low = _read_fixed(packed, offsets[nonzero_k], k_each[nonzero_k])
            gaps[nonzero_k] |= low
        values = gaps.astype(np.int64) + 1
        # Segmented cumulative sum: subtract each block's running total.
        csum = np.cumsum(values)
        base = (
            np.concatenate(([0], csum[first[1:] - 1])) if len(rice) > 1 else np.zeros(1, np.int64)
        )
        x = csum - base[block_of] - 1
        parts = np.split(x, np.cumsum(counts)[:-1])
        for (slot, *_), part in zip(rice, parts, strict=True):
            if part[-1] < 0:
                raise CodecError("index overflow")
            out[slot] = part
    return out  # type: ignore[return-value]
