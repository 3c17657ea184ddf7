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
    """Per non-empty block: (use_rice bool, k) with the choices of encode_indices."""
    last = x[starts + ns - 1]
    k = np.array(
        [
            rice_parameter((lst - n + 1) / n)
            for lst, n in zip(last.tolist(), ns.tolist(), strict=True)
        ],
        dtype=np.int64,
    )
    high = np.zeros(ns.size, dtype=np.int64)
    for kk in np.unique(k).tolist():  # one pass per distinct k (usually one or two)
        sums = np.add.reduceat(gaps >> kk, starts)
        high = np.where(k == kk, sums, high)
    best = (ns * k + 7) // 8 * 8 + (ns + high + 7) // 8 * 8
    gmax = np.maximum.reduceat(gaps, starts).tolist()
    width = np.array([max(1, int(v).bit_length()) for v in gmax], dtype=np.int64)
    packed = (ns * width + 7) // 8 * 8
    bitmap = np.where(last < _MAX_BITMAP_UNIVERSE, (last + 8) // 8 * 8, np.iinfo(np.int64).max)
    use = (best <= packed) & (best <= bitmap)
    return use, k


def encode_rice_many(
    arrays: Sequence[np.ndarray], one: Callable[[np.ndarray], bytes], *, validated: bool = False
) -> list[bytes]:
    """Encode many sorted index arrays; non-Rice or invalid blocks go to ``one``."""
    xs = list(arrays) if validated else [np.asarray(a) for a in arrays]
    out: list[bytes | None] = [None] * len(xs)
    if not validated and any(
        a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)) for a in xs
    ):
        return [one(a) for a in xs]
    ns_all = np.array([a.size for a in xs], dtype=np.int64)
    nonempty = np.flatnonzero(ns_all)
    for i in np.flatnonzero(ns_all == 0).tolist():
        out[i] = one(xs[i])
    if nonempty.size == 0:
        return out  # type: ignore[return-value]
    parts = xs if nonempty.size == len(xs) else [xs[i] for i in nonempty.tolist()]
    x = np.concatenate(parts).astype(np.int64, copy=False)
    ns = ns_all[nonempty]
    starts = np.cumsum(ns) - ns
    gaps = np.empty(x.size, dtype=np.int64)
    np.subtract(x[1:], x[:-1], out=gaps[1:])
    gaps -= 1
    gaps[starts] = x[starts]
    if gaps.min() < 0:
        return [one(a) for a in xs]  # raises the one-block error
    use, ks = _rice_choice(x, ns, starts, gaps)
    for b in np.flatnonzero(~use).tolist():
        i = int(nonempty[b])
        out[i] = one(xs[i])
    for k in np.unique(ks[use]).tolist():
        member = use & (ks == k)
        g = gaps if member.all() else gaps[np.repeat(member, ns)]
        slots = nonempty[member].tolist()
        _encode_group(out, slots, ns[member], g, k)
    return out  # type: ignore[return-value]


def _encode_group(out: list, slots: list[int], ns: np.ndarray, gaps: np.ndarray, k: int) -> None:
    """Rice-encode consecutive blocks (sizes ``ns``, all parameter ``k``) of ``gaps``."""
    total = gaps.size
    first = np.cumsum(ns) - ns
    # High parts: one bit array, each block's unary region byte-aligned.  Value j of
    # block b ends its unary code at bit 8·ustart[b] − 1 + Σ_{i<=j in b} (g_i >> k) + 1:
    # one cumsum, with each block's start offset folded into its first term.
    cs = gaps >> k
    cs += 1
    sums = np.add.reduceat(cs, first)  # unary bits per block
    unary_bytes = (sums + 7) // 8
    ustart = np.cumsum(unary_bytes) - unary_bytes
    jump = np.empty(ns.size, dtype=np.int64)
    jump[0] = -1
    jump[1:] = 8 * unary_bytes[:-1] - sums[:-1]
    cs[first] += jump
    np.cumsum(cs, out=cs)
    ubits = np.zeros(int(unary_bytes.sum()) * 8, dtype=np.uint8)
    ubits[cs] = 1
    unary = np.packbits(ubits).tobytes()
    low_bytes = (ns * k + 7) // 8
    if k:
        # Low parts: block b's values go to slots 8·gstart[b] + (j − first[b]) of groups of 8.
        groups = (ns + 7) // 8
        gstart = np.cumsum(groups) - groups
        dest = np.ones(total, dtype=np.int64)
        dest[0] = 0
        dest[first[1:]] = 1 + 8 * groups[:-1] - ns[:-1]
        np.cumsum(dest, out=dest)
        padded = np.zeros(int(groups.sum()) * 8, dtype=np.uint64)
        padded[dest] = (gaps & ((1 << k) - 1)).view(np.uint64)
        low = _groups_to_bytes(padded, k).tobytes()
        lstart = (gstart * k).tolist()
    else:
        low, lstart = b"", [0] * len(slots)
    head = bytes((CODEC_RICE, k))
    for slot, n, ls, lb, us, ub in zip(slots, ns.tolist(), lstart, low_bytes.tolist(),
                                       ustart.tolist(), unary_bytes.tolist(), strict=True):  # fmt: skip
        out[slot] = b"".join((head, varint(n), low[ls : ls + lb], unary[us : us + ub]))


_PADS = [bytes(k) for k in range(MAX_RICE_K + 1)]


class _Group:
    """Rice blocks sharing one parameter k, split into low and high parts."""

    __slots__ = ("blocks", "lows", "ns", "slots", "unary")

    def __init__(self) -> None:
        self.blocks: list[bytes | memoryview] = []
        self.slots: list[int] = []
        self.ns: list[int] = []
        self.lows: list[bytes | memoryview] = []
        self.unary: list[bytes | memoryview] = []


def decode_rice_many(blocks: Sequence[bytes | memoryview],
                     one: Callable[[bytes | memoryview], np.ndarray]) -> list[np.ndarray]:  # fmt: skip
    """Decode many blocks; Rice blocks vectorised per parameter, others via ``one``."""
    out: list[np.ndarray | None] = [None] * len(blocks)
    groups: dict[int, _Group] = {}
    pads = _PADS
    for i, block in enumerate(blocks):
        size = len(block)
        if size >= 4 and block[0] == CODEC_RICE and block[1] <= MAX_RICE_K:
            k = block[1]
            n = block[2]
            if n < 0x80:
                pos = 3
            else:
                n, pos = read_varint(block, 2)
            low = (n * k + 7) >> 3
            if n > 0 and size > pos + low:
                g = groups.get(k)
                if g is None:
                    g = groups[k] = _Group()
                view = memoryview(block)
                g.blocks.append(block)
                g.slots.append(i)
                g.ns.append(n)
                g.lows.append(view[pos : pos + low])
                pad = ((n + 7) >> 3) * k - low  # low part padded to whole groups of 8
                if pad:
                    g.lows.append(pads[k][:pad])
                g.unary.append(view[pos + low :])
                continue
        out[i] = one(block)
    for k, group in groups.items():
        if not _decode_group(out, group, k):  # indices near 2^63: the exact slow path
            for slot, block in zip(group.slots, group.blocks, strict=True):
                out[slot] = one(block)
    return out  # type: ignore[return-value]


def _decode_group(out: list, group: _Group, k: int) -> bool:
    """Rice-decode blocks that share parameter ``k`` into ``out`` slots.

    Returns False (writing nothing) when int64 arithmetic could overflow.
    """
    ns = np.array(group.ns, dtype=np.int64)
    unary_views = group.unary
    ubytes = np.array([len(v) for v in unary_views], dtype=np.int64)
    ubits = np.unpackbits(np.frombuffer(b"".join(unary_views), dtype=np.uint8))
    ones = np.flatnonzero(ubits.view(bool))  # the bool view takes numpy's fast path
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
    gaps = high  # int64 throughout (k ≤ 56); huge values take the slow path
    if int(high.max()) >= 1 << max(0, 61 - k):
        return False
    if k:
        gaps <<= k
        rows = np.frombuffer(b"".join(group.lows), dtype=np.uint8).reshape(-1, k)
        low = _bytes_to_groups(rows, k).view(np.int64)
        groups = (ns + 7) // 8
        shift = np.repeat(8 * (np.cumsum(groups) - groups) - first, ns)
        shift += np.arange(total)
        gaps |= low[shift]
    if float(np.sum(gaps, dtype=np.float64)) + total >= 2.0**62:
        return False
    gaps += 1
    np.cumsum(gaps, out=gaps)
    base = np.empty(ns.size, dtype=np.int64)
    base[0] = 1
    base[1:] = gaps[first[1:] - 1] + 1
    gaps -= np.repeat(base, ns)
    starts = first.tolist()
    x_parts = [gaps[a:b] for a, b in zip(starts, [*starts[1:], total], strict=True)]
    for slot, part in zip(group.slots, x_parts, strict=True):
        out[slot] = part
    return True
