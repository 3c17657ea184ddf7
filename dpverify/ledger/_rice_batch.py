"""Vectorised Rice coding of many index blocks at once (layout: ``codec.py``).

Per-block numpy calls cost microseconds each; a ledger holds 10⁵ blocks.  Here
all blocks of a batch share one pass: gaps, Rice parameters and costs by
``reduceat``; the unary high parts through one ``packbits``/``unpackbits``;
the fixed-width low parts eight values at a time (eight ``k``-bit values are
exactly ``k`` bytes, assembled from or split into 64-bit words with constant
shifts).  Blocks that are not Rice-coded go through the one-block functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dpverify.ledger.codec import (
    _MAX_BITMAP_UNIVERSE,
    CODEC_RICE,
    MAX_RICE_K,
    CodecError,
    gaps_to_indices,
    read_varint,
    rice_parameter,
    varint,
)

__all__ = ["decode_rice_many", "encode_rice_many"]

_U64 = np.uint64


def _word_layout(k: int) -> list[tuple[int, int, int]]:
    """For value j of a group of 8: (word, offset, k) with bits [8k) split in 64-bit words."""
    return [(j * k // 64, j * k % 64, k) for j in range(8)]


def _groups_to_bytes(values: np.ndarray, k: int) -> np.ndarray:
    """(G·8,) uint64 values < 2^k → (G, k) uint8: each row the 8 values' bits, MSB-first."""
    groups = values.reshape(-1, 8)
    words = (k + 7) // 8
    out = np.zeros((groups.shape[0], words), dtype=np.uint64)
    for j, (w, off, _) in enumerate(_word_layout(k)):
        v = groups[:, j]
        if off + k <= 64:
            out[:, w] |= v << _U64(64 - off - k)
        else:
            out[:, w] |= v >> _U64(off + k - 64)
            out[:, w + 1] |= v << _U64(128 - off - k)
    return out.astype(">u8").view(np.uint8).reshape(groups.shape[0], 8 * words)[:, :k]


def _bytes_to_groups(rows: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`_groups_to_bytes`: (G, k) uint8 → (G·8,) uint64."""
    words = (k + 7) // 8
    padded = np.zeros((rows.shape[0], 8 * words), dtype=np.uint8)
    padded[:, :k] = rows
    w64 = padded.view(">u8").astype(np.uint64)
    mask = _U64((1 << k) - 1)
    out = np.empty((rows.shape[0], 8), dtype=np.uint64)
    for j, (w, off, _) in enumerate(_word_layout(k)):
        if off + k <= 64:
            out[:, j] = (w64[:, w] >> _U64(64 - off - k)) & mask
        else:
            out[:, j] = (
                (w64[:, w] << _U64(off + k - 64)) | (w64[:, w + 1] >> _U64(128 - off - k))
            ) & mask
    return out.ravel()


def _rice_choice(x: np.ndarray, ns: np.ndarray, starts: np.ndarray, gaps: np.ndarray):
    """Per non-empty block: (use_rice bool, k) with the tie-breaks of encode_indices."""
    last = x[starts + ns - 1]
    k0 = np.array(
        [
            rice_parameter((lst - n + 1) / n)
            for lst, n in zip(last.tolist(), ns.tolist(), strict=True)
        ],
        dtype=np.int64,
    )
    block_of = np.repeat(np.arange(ns.size), ns)

    def cost(k: np.ndarray) -> np.ndarray:
        high = np.add.reduceat(gaps >> k[block_of], starts)
        return (ns * k + 7) // 8 * 8 + (ns + high + 7) // 8 * 8

    c0 = cost(k0)
    k1 = np.minimum(k0 + 1, MAX_RICE_K)
    c1 = np.where(k0 + 1 <= MAX_RICE_K, cost(k1), np.iinfo(np.int64).max)
    k = np.where(c1 < c0, k1, k0)
    best = np.minimum(c0, c1)
    gmax = np.maximum.reduceat(gaps, starts).tolist()
    width = np.array([max(1, int(v).bit_length()) for v in gmax], dtype=np.int64)
    packed = (ns * width + 7) // 8 * 8
    bitmap = np.where(last < _MAX_BITMAP_UNIVERSE, (last + 8) // 8 * 8, np.iinfo(np.int64).max)
    use = (best <= packed) & (best <= bitmap)
    return use, k


def encode_rice_many(
    arrays: Sequence[np.ndarray], one: Callable[[np.ndarray], bytes]
) -> list[bytes]:
    """Encode many sorted index arrays; non-Rice or invalid blocks go to ``one``."""
    xs = [np.asarray(a) for a in arrays]
    out: list[bytes | None] = [None] * len(xs)
    if any(a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)) for a in xs):
        return [one(a) for a in xs]
    ns_all = np.fromiter((a.size for a in xs), dtype=np.int64, count=len(xs))
    nonempty = np.flatnonzero(ns_all)
    for i in np.flatnonzero(ns_all == 0).tolist():
        out[i] = one(xs[i])
    if nonempty.size == 0:
        return out  # type: ignore[return-value]
    x = np.concatenate([xs[i] for i in nonempty.tolist()]).astype(np.int64, copy=False)
    ns = ns_all[nonempty]
    starts = np.cumsum(ns) - ns
    gaps = np.empty(x.size, dtype=np.int64)
    gaps[0] = x[0]
    np.subtract(x[1:], x[:-1], out=gaps[1:])
    gaps[1:] -= 1
    gaps[starts] = x[starts]
    if gaps.min() < 0:
        return [one(a) for a in xs]  # raises the one-block error
    use, ks = _rice_choice(x, ns, starts, gaps)
    for b in np.flatnonzero(~use).tolist():
        i = int(nonempty[b])
        out[i] = one(xs[i])
    for k in np.unique(ks[use]).tolist():
        sel = np.flatnonzero(use & (ks == k))
        _encode_group(out, [int(nonempty[b]) for b in sel.tolist()], ns[sel], starts[sel], gaps, k)
    return out  # type: ignore[return-value]


def _encode_group(out: list, slots: list[int], ns: np.ndarray, starts: np.ndarray,
                  gaps: np.ndarray, k: int) -> None:  # fmt: skip
    """Rice-encode the blocks (all with parameter ``k``) at ``starts`` of ``gaps``."""
    total = int(ns.sum())
    local = np.arange(total) - np.repeat(np.cumsum(ns) - ns, ns)
    g = gaps[np.repeat(starts, ns) + local].astype(np.uint64)
    high = (g >> _U64(k)).astype(np.int64)
    # High parts: one bit array, each block's unary region byte-aligned.
    cs = np.cumsum(high + 1)
    first = np.cumsum(ns) - ns
    before = cs[first] - (high[first] + 1)
    unary_bits = cs[first + ns - 1] - before
    unary_bytes = (unary_bits + 7) // 8
    ustart = np.cumsum(unary_bytes) - unary_bytes
    ubits = np.zeros(int(unary_bytes.sum()) * 8, dtype=np.uint8)
    ubits[np.repeat(8 * ustart - before, ns) + cs - 1] = 1
    unary = np.packbits(ubits).tobytes()
    low_bytes = (ns * k + 7) // 8
    if k:
        groups = (ns + 7) // 8
        gstart = np.cumsum(groups) - groups
        padded = np.zeros(int(groups.sum()) * 8, dtype=np.uint64)
        padded[np.repeat(8 * gstart, ns) + local] = g & _U64((1 << k) - 1)
        low = _groups_to_bytes(padded, k).tobytes()
        lstart = (gstart * k).tolist()
    else:
        low, lstart = b"", [0] * len(slots)
    for slot, n, ls, lb, us, ub in zip(slots, ns.tolist(), lstart, low_bytes.tolist(),
                                       ustart.tolist(), unary_bytes.tolist(), strict=True):  # fmt: skip
        out[slot] = b"".join(
            (bytes((CODEC_RICE, k)), varint(n), low[ls : ls + lb], unary[us : us + ub])
        )


def decode_rice_many(blocks: Sequence[bytes | memoryview],
                     one: Callable[[bytes | memoryview], np.ndarray]) -> list[np.ndarray]:  # fmt: skip
    """Decode many blocks; Rice blocks vectorised per parameter, others via ``one``."""
    out: list[np.ndarray | None] = [None] * len(blocks)
    by_k: dict[int, list[tuple[int, int, memoryview]]] = {}
    for i, block in enumerate(blocks):
        if len(block) >= 3 and block[0] == CODEC_RICE:
            k = block[1]
            n, pos = read_varint(block, 2)
            body = memoryview(block)[pos:]
            if k <= MAX_RICE_K and n > 0 and len(body) > (n * k + 7) // 8:
                by_k.setdefault(k, []).append((i, n, body))
                continue
        out[i] = one(block)
    for k, items in by_k.items():
        _decode_group(out, items, k)
    return out  # type: ignore[return-value]


def _decode_group(out: list, items: list[tuple[int, int, memoryview]], k: int) -> None:
    """Rice-decode blocks that share parameter ``k``; results into ``out`` slots."""
    ns_list = [n for _, n, _ in items]
    ns = np.array(ns_list, dtype=np.int64)
    low_sizes = [(n * k + 7) // 8 for n in ns_list]
    group_sizes = [(n + 7) // 8 * k for n in ns_list]  # low part padded to whole groups
    zeros = bytes(k)
    low_joined = b"".join(
        part
        for (_, _, body), lb, gb in zip(items, low_sizes, group_sizes, strict=True)
        for part in (body[:lb], zeros[: gb - lb])
    )
    unary_views = [body[lb:] for (_, _, body), lb in zip(items, low_sizes, strict=True)]
    ubytes = np.array([len(v) for v in unary_views], dtype=np.int64)
    ubits = np.unpackbits(np.frombuffer(b"".join(unary_views), dtype=np.uint8))
    ones = np.flatnonzero(ubits)
    total = int(ns.sum())
    if ones.size != total:
        raise CodecError("Rice high part inconsistent with the entry count")
    first = np.cumsum(ns) - ns
    region = 8 * (np.cumsum(ubytes) - ubytes)
    if np.any(ones[first] < region) or np.any(
        ones[first + ns - 1] // 8 != region // 8 + ubytes - 1
    ):
        raise CodecError("Rice high part inconsistent with the entry count")
    high = np.empty(total, dtype=np.int64)
    np.subtract(ones[1:], ones[:-1], out=high[1:])
    high[1:] -= 1
    high[first] = ones[first] - region
    gaps = high.astype(np.uint64)
    if k:
        gaps <<= _U64(k)
        rows = np.frombuffer(low_joined, dtype=np.uint8).reshape(-1, k)
        low = _bytes_to_groups(rows, k)
        groups = (ns + 7) // 8
        shift = np.repeat(8 * (np.cumsum(groups) - groups) - first, ns)
        shift += np.arange(total)
        gaps |= low[shift]
    if int(gaps.max()) >= (1 << 62):
        x_parts = [gaps_to_indices(p) for p in np.split(gaps, first[1:])]
    else:
        x = gaps.astype(np.int64)
        x += 1
        np.cumsum(x, out=x)
        base = np.concatenate(([0], x[first[1:] - 1])) + 1
        x -= np.repeat(base, ns)
        x_parts = np.split(x, first[1:])
    for (slot, _, _), part in zip(items, x_parts, strict=True):
        out[slot] = part
