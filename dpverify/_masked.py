"""The sort-free per-example kernel of the sampling battery's streaming pass.

:class:`MaskedRange` holds, for the examples of one index range, the step
of each one's last inclusion and a 64-bit mask of its inclusions in the
window before it, and turns consecutive batches into return gaps, lagged
overlaps, inclusion counts and partial batch hashes with a few gathers and
scatters per step (see :mod:`dpverify.stats._stream`, which uses it, and
:mod:`dpverify._masked_helper`, which runs one in a second process).  It
imports numpy only, so a helper process starts in a fraction of a second.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["MaskedRange", "bit_positions", "weights"]

#: ``_SHIFT[d]`` = 2^(d−1) for 1 <= d <= 64, and 0 for d = 65 (a gap beyond the window).
_SHIFT = np.concatenate(
    ([np.uint64(0)], np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64)), [np.uint64(0)])
).astype(np.uint64)
#: Per example: last inclusion, recent-inclusion mask, hash weight, inclusion count (32 bytes:
#: one gather and one scatter per index bring all four; no separate table or count pass).
_CELL = np.dtype([("last", "<i8"), ("mask", "<u8"), ("weight", "<u8"), ("count", "<i8")])
#: ``last`` of an example never seen on the masked path: any "gap" from it exceeds every real gap.
_NEVER = -(1 << 50)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def weights(idx: np.ndarray, key: np.uint64) -> np.ndarray:
    """SplitMix64 finaliser of ``idx·φ + key``: pseudo-random 64-bit weights."""
    with np.errstate(over="ignore"):
        z = idx.astype(np.uint64) * _GOLDEN + key
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def bit_positions(words: np.ndarray, size: int) -> np.ndarray:
    """``out[j]`` = how many of ``words`` (uint64) have bit j set, j < size."""
    hist = np.zeros(4 << 16, dtype=np.int64)
    add_halfword_histogram(hist, words)
    return bits_of_histogram(hist, size)


#: ``_OFFSETS[k]`` = k·2¹⁶: the four 16-bit parts of a word go to four histograms side by side.
_OFFSETS = np.arange(4, dtype=np.intp) << 16


def add_halfword_histogram(hist: np.ndarray, words: np.ndarray) -> None:
    """Add to ``hist`` (length 4·2¹⁶) the histogram of the four 16-bit parts of each nonzero word.

    One ``bincount`` per chunk of words instead of a pass per set bit;
    :func:`bits_of_histogram` turns the sum of such histograms into bit counts.
    """
    w = words[words != 0]
    if w.size:
        parts = w.view(np.uint16).reshape(-1, 4).astype(np.intp)
        parts += _OFFSETS
        hist += np.bincount(parts.ravel(), minlength=hist.size)


def bits_of_histogram(hist: np.ndarray, size: int) -> np.ndarray:
    """``out[j]`` = words with bit j set, j < size, from :func:`add_halfword_histogram`'s sums."""
    out = np.zeros(64, dtype=np.int64)
    # little-endian: part k holds bits 16k..16k+15 of the word
    parts = hist.reshape(4, 1 << 16)
    for k in range(4):
        h = parts[k]
        for b in range(16):  # values with bit b set: the upper half of each block of 2^(b+1)
            out[16 * k + b] = int(h.reshape(-1, 2, 1 << b)[:, 1, :].sum())
    return out[:size]


#: De Bruijn multiplier and table: the position of a word's lowest set bit in two operations.
_DEBRUIJN = 0x03F79D71B4CB0A89
_DEBRUIJN_TABLE = np.zeros(64, dtype=np.int64)
for _p in range(64):
    _DEBRUIJN_TABLE[(((1 << _p) * _DEBRUIJN) & ((1 << 64) - 1)) >> 58] = _p
del _p


def _compiled_steps() -> object | None:
    """The per-index loop compiled with numba (``None`` without numba: the numpy path runs).

    Integer arithmetic only (uint64 wrap-around as in numpy), so the result is
    the numpy path's, bit for bit (tests compare both).
    """
    if os.environ.get("DPVERIFY_NO_NUMBA"):
        return None
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; the numpy path remains
        return None

    @numba.njit(cache=True, nogil=True)
    def steps(cells, flat, starts, ends, t0, max_lag, never, table, gap_hist, lag_bits, hashes, block):
        # Example-block-major: the cells of one block of examples stay in the CPU cache while
        # every step of the chunk visits them in time order; each example lives in one block,
        # so its inclusions are still applied in time order (batches are sorted).
        low_bits = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - max_lag)
        one = np.uint64(1)
        cur = starts.copy()
        upper = 0
        while upper < cells.size:
            upper += block
            for j in range(starts.size):
                t = t0 + j
                h = np.uint64(0)
                k = cur[j]
                end = ends[j]
                while k < end and flat[k] < upper:
                    if k > starts[j] and flat[k] <= flat[k - 1]:
                        return False  # not strictly increasing: the block walk needs sorted batches
                    c = cells[flat[k]]
                    h += c.weight
                    last = c.last
                    rel = np.uint64(0)
                    if last != never:
                        d = t - last
                        gap_hist[d] += 1
                        if d <= 64:
                            rel = (c.mask << np.uint64(d - 1)) & low_bits
                            w = rel
                            while w != np.uint64(0):
                                low = w & (~w + one)
                                lag_bits[table[(low * np.uint64(_DEBRUIJN)) >> np.uint64(58)]] += 1
                                w ^= low
                    c.mask = ((rel << one) | one) & low_bits
                    c.last = t
                    c.count += 1
                    k += 1
                cur[j] = k
                hashes[j] += h
        for j in range(starts.size):  # every index consumed: batches sorted, all in range
            if cur[j] != ends[j]:
                return False
        return True

    return steps


#: Examples per block of the compiled loop: 8 192 cells of 32 bytes (256 KiB) stay in the L2 cache.
_BLOCK = 8192

_STEPS: object | None = None
_STEPS_LOADED = False


def compiled_steps() -> object | None:
    """The compiled loop (compiled on first use, cached on disk by numba), or ``None``."""
    global _STEPS, _STEPS_LOADED
    if not _STEPS_LOADED:
        _STEPS, _STEPS_LOADED = _compiled_steps(), True
    return _STEPS


class MaskedRange:
    """The sort-free per-example state of the examples in ``[lo, lo + size)``.

    Per example, in one 32-byte cell: the step of its last inclusion, a
    64-bit mask of its inclusions in the ``max_lag`` steps before it, its
    batch-hash weight and its inclusion count; plus the return-gap histogram and lagged overlaps of
    those examples' inclusions, and each step's partial batch hash (the sum of
    its examples' weights, mod 2⁶⁴).  Every statistic is a sum over examples,
    so disjoint ranges of examples are independent and their results add:
    :class:`BatchStream` may hand a range to a second process
    (:mod:`dpverify._masked_helper`).
    """

    def __init__(self, lo: int, size: int, max_lag: int, key: np.uint64) -> None:
        self.lo, self.size, self.max_lag = int(lo), int(size), int(max_lag)
        self.cells = np.zeros(self.size, dtype=_CELL)
        self.cells["last"] = _NEVER
        self.cells["weight"] = weights(np.arange(self.lo, self.lo + self.size), np.uint64(key))
        self.lag_hist = np.zeros(4 << 16, dtype=np.int64)  # numpy path
        self.lag_bits = np.zeros(64, dtype=np.int64)  # compiled path
        self.compiled = True  # use the compiled loop when numba is there
        self.gap_hist = np.zeros(1, dtype=np.int64)
        self.hashes: list[np.ndarray] = []

    def steps(self, flat: np.ndarray, sizes: np.ndarray, t0: int) -> None:
        """Consecutive steps ``t0, t0 + 1, ...``: their batches (local indices ``i − lo``,
        sorted within a step) concatenated in ``flat``, their sizes in ``sizes``.

        ``mask[i]`` has bit j set when example i was included j steps before
        its last inclusion ``last[i]`` (bit 0: the last inclusion itself), for
        j < max_lag.  At step t, with gap d = t − last[i] >= 1, the mask
        ``mask[i] << (d − 1)`` has bit p set exactly when example i was
        included at step t − (p + 1): its set bits p < max_lag are the earlier
        inclusions at lags 1..max_lag.  The shift is a multiplication by
        ``_SHIFT[min(d, 65)]`` (2^(d−1), and 0 beyond a gap of 64, which
        empties the mask); an example never seen has ``last = _NEVER``, so its
        "gap" is above any real one and is dropped from the gap histogram.
        """
        sizes = np.asarray(sizes, dtype=np.int64)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        compiled = compiled_steps() if self.compiled else None
        if compiled is not None:
            top = t0 + sizes.size + 1  # every gap is at most the last step
            if self.gap_hist.size < top:
                self.gap_hist = np.concatenate(
                    (self.gap_hist, np.zeros(max(top, 2 * self.gap_hist.size) - self.gap_hist.size, dtype=np.int64))
                )
            hashes = np.zeros(sizes.size, dtype=np.uint64)
            if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= self.size):
                raise IndexError(f"index outside the range of {self.size} examples")
            done = compiled(  # type: ignore[operator]
                self.cells, np.ascontiguousarray(flat, dtype=np.int64), starts, ends, int(t0),
                self.max_lag, _NEVER, _DEBRUIJN_TABLE, self.gap_hist, self.lag_bits, hashes,
                _BLOCK,
            )  # fmt: skip
            if not done:
                raise IndexError("batches must be sorted within a step")
            self.hashes.append(hashes)
            return
        cells = self.cells
        max_lag = self.max_lag
        low_bits = np.uint64((1 << max_lag) - 1)  # bits 0..max_lag-1
        full = max_lag == 64  # then the masks need no trimming
        one = np.uint64(1)
        hashes = np.zeros(sizes.size, dtype=np.uint64)
        gaps: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        for j, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            if a == b:
                continue
            t = t0 + j
            batch = flat[a:b]
            rows = cells.take(batch)  # take/put: numpy's fast paths for 32-byte items
            hashes[j] = rows["weight"].sum()  # mod 2⁶⁴
            d = t - rows["last"]
            gaps.append(d)
            rel = rows["mask"] * _SHIFT[np.minimum(d, 65)]  # << (d − 1), mod 2⁶⁴; 0 past lag 64
            if not full:
                rel &= low_bits
            masks.append(rel)
            nxt = (rel << one) | one
            if not full:
                nxt &= low_bits
            rows["mask"] = nxt
            rows["last"] = t
            rows["count"] += 1
            np.put(cells, batch, rows)
        self.hashes.append(hashes)
        if gaps:
            g = np.concatenate(gaps)
            g = g[g <= t0 + sizes.size]  # drop first inclusions (gap from _NEVER)
            hist = np.bincount(g) if g.size else np.zeros(1, dtype=np.int64)
            if hist.size > self.gap_hist.size:
                hist[: self.gap_hist.size] += self.gap_hist
                self.gap_hist = hist
            else:
                self.gap_hist[: hist.size] += hist
        if masks:
            add_halfword_histogram(self.lag_hist, np.concatenate(masks))

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(counts, last, gap_hist, lag_overlap, hashes)`` of the range (last: −1 if never seen)."""
        hashes = np.concatenate(self.hashes) if self.hashes else np.zeros(0, dtype=np.uint64)
        last = np.maximum(self.cells["last"], -1)
        nonzero = np.flatnonzero(self.gap_hist)
        gap_hist = self.gap_hist[: nonzero[-1] + 1 if nonzero.size else 1]  # no trailing zeros
        lag_overlap = np.zeros(self.max_lag + 1, dtype=np.int64)
        lag_overlap[1:] = bits_of_histogram(self.lag_hist, self.max_lag) + self.lag_bits[: self.max_lag]
        return self.cells["count"].copy(), last, gap_hist, lag_overlap, hashes
