"""One streaming pass over a sequence of batches, keeping only O(N + T) state.

:class:`BatchStream` consumes batches (sorted distinct int64 indices) one step
at a time and accumulates every sufficient statistic the battery needs:

* the batch sizes ``b_t`` (length T);
* the per-example inclusion counts ``c_i`` (length N);
* the histogram of *return gaps*: for each inclusion of example i at step t
  after an earlier one, the distance to its previous inclusion;
* the lagged overlaps ``O_k = Σ_t |B_t ∩ B_{t−k}|`` for ``1 <= k <= max_lag``;
* the number of adjacent index pairs ``(j, j+1)`` inside batches;
* a 64-bit hash of every batch, to find exact repeats at any lag.

Work happens in chunks of about ``chunk_indices`` recorded indices.  A chunk
is extended by the events of the previous ``max_lag`` steps (the bounded window
of recent batches), the events are sorted by ``(example, step)`` with one
``np.sort`` of packed integer keys, and neighbours in that order give return
gaps and lagged overlaps without any per-step Python loop.  Time is
O(n log n) in the number n of recorded indices (the sort), memory
O(N + T + chunk + window).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpverify.errors import InvalidArgument

__all__ = ["BatchStream", "StreamSummary"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamSummary:
    """Sufficient statistics of a batch stream (see module docstring)."""

    dataset_size: int
    sizes: np.ndarray
    counts: np.ndarray
    gap_hist: np.ndarray
    lag_overlap: np.ndarray
    adjacent_pairs: int
    repeated_pairs: int
    max_lag: int

    @property
    def steps(self) -> int:
        return int(self.sizes.size)

    @property
    def total(self) -> int:
        return int(self.sizes.sum())


class BatchStream:
    """Accumulates a stream of batches; call :meth:`add` per step, then :meth:`finish`.

    Args:
        dataset_size: N; every index must lie in ``[0, N)``.
        max_lag: largest lag of the overlap scan (the window of recent batches).
        chunk_indices: indices buffered before a vectorised chunk is processed.
        hash_seed: seed of the random weights of the batch hash.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        max_lag: int = 64,
        chunk_indices: int = 1 << 20,
        hash_seed: int = 0,
    ) -> None:
        self._n = int(dataset_size)
        self._max_lag = int(max_lag)
        self._chunk = int(chunk_indices)
        rng = np.random.default_rng([int(hash_seed), 0x5EED])
        self._weights = rng.integers(
            0, np.iinfo(np.uint64).max, size=self._n, dtype=np.uint64, endpoint=True
        )
        self._counts = np.zeros(self._n, dtype=np.int64)
        self._last_seen = np.full(self._n, -1, dtype=np.int64)
        self._gap_hist = np.zeros(1, dtype=np.int64)
        self._lag_overlap = np.zeros(self._max_lag + 1, dtype=np.int64)
        self._adjacent = 0
        self._sizes: list[np.ndarray] = []
        self._hashes: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._step = 0  # steps added so far
        self._flushed = 0  # steps already processed
        self._ctx_idx = np.zeros(0, dtype=np.int64)
        self._ctx_time = np.zeros(0, dtype=np.int64)

    def add(self, batch: np.ndarray) -> None:
        """Record the batch of the next step (sorted distinct integers in ``[0, N)``)."""
        arr = np.asarray(batch)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise InvalidArgument(
                f"batch at step {self._step}: expected a 1-D integer array, got shape {arr.shape} {arr.dtype}"
            )
        self._pending.append(arr.astype(np.int64, copy=False))
        self._pending_n += arr.size
        self._step += 1
        if self._pending_n >= self._chunk:
            self._flush()

    def finish(self) -> StreamSummary:
        """Process what is buffered and return the summary (the stream can not be extended after)."""
        self._flush()
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, dtype=np.int64)
        hashes = np.concatenate(self._hashes) if self._hashes else np.zeros(0, dtype=np.uint64)
        _, mult = np.unique(hashes, return_counts=True)
        repeated = int(np.sum(mult * (mult - 1) // 2))
        return StreamSummary(
            dataset_size=self._n,
            sizes=sizes,
            counts=self._counts,
            gap_hist=self._gap_hist,
            lag_overlap=self._lag_overlap,
            adjacent_pairs=self._adjacent,
            repeated_pairs=repeated,
            max_lag=self._max_lag,
        )

    # -- chunk processing -------------------------------------------------------------------

    def _flush(self) -> None:
        batches, self._pending, self._pending_n = self._pending, [], 0
        if not batches:
            return
        t0 = self._flushed
        t1 = t0 + len(batches)
        self._flushed = t1
        sizes = np.fromiter((b.size for b in batches), dtype=np.int64, count=len(batches))
        flat = np.concatenate(batches) if sizes.sum() else np.zeros(0, dtype=np.int64)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        self._sizes.append(sizes)
        self._check_and_count(flat, starts, t0)
        csum = np.concatenate(([np.uint64(0)], np.cumsum(self._weights[flat], dtype=np.uint64)))
        self._hashes.append(csum[ends] - csum[starts])
        times = np.repeat(np.arange(t0, t1, dtype=np.int64), sizes)
        self._pairs(flat, times, t0, t1)

    def _check_and_count(self, flat: np.ndarray, starts: np.ndarray, t0: int) -> None:
        if flat.size == 0:
            return
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= self._n:
            bad = int(np.flatnonzero((flat < 0) | (flat >= self._n))[0])
            step = t0 + int(np.searchsorted(starts, bad, side="right")) - 1
            raise InvalidArgument(
                f"batch at step {step}: index {int(flat[bad])} is outside [0, dataset_size={self._n})"
            )
        diffs = np.diff(flat)
        inner = np.ones(diffs.size, dtype=bool)
        cut = starts[(starts > 0) & (starts < flat.size)] - 1
        inner[cut] = False
        bad_pos = np.flatnonzero(inner & (diffs <= 0))
        if bad_pos.size:
            step = t0 + int(np.searchsorted(starts, bad_pos[0] + 1, side="right")) - 1
            raise InvalidArgument(
                f"batch at step {step}: indices must be strictly increasing (sorted, no repeats)"
            )
        self._adjacent += int(np.count_nonzero(inner & (diffs == 1)))
        self._counts += np.bincount(flat, minlength=self._n)

    def _pairs(self, flat: np.ndarray, times: np.ndarray, t0: int, t1: int) -> None:
        """Return gaps and lagged overlaps of this chunk's events (window included)."""
        idx = np.concatenate((self._ctx_idx, flat))
        tim = np.concatenate((self._ctx_time, times))
        keep = tim >= t1 - self._max_lag
        self._ctx_idx, self._ctx_time = idx[keep], tim[keep]
        if idx.size == 0:
            return
        base = t0 - self._max_lag
        shift = int(t1 - base - 1).bit_length()
        # Pack (example, step) into one sortable integer; 32 bits when they fit (faster sort).
        dtype = np.uint32 if (self._n - 1) < (1 << (32 - shift)) else np.uint64
        keys = (idx.astype(dtype) << dtype(shift)) | (tim - base).astype(dtype)
        keys.sort()
        sidx = (keys >> dtype(shift)).astype(np.int64)
        stime = (keys & dtype((1 << shift) - 1)).astype(np.int64) + base
        del keys
        new = stime >= t0
        same = sidx[1:] == sidx[:-1]
        step = stime[1:] - stime[:-1]
        # Return gaps: to the sorted predecessor of the same example, else to last_seen.
        inner = step[same & new[1:]]
        first = np.concatenate(([0], np.flatnonzero(~same) + 1))
        first = first[new[first]]
        seen = self._last_seen[sidx[first]]
        outer = stime[first][seen >= 0] - seen[seen >= 0]
        gaps = np.concatenate((inner, outer))
        if gaps.size:
            hist = np.bincount(gaps)
            if hist.size > self._gap_hist.size:
                hist[: self._gap_hist.size] += self._gap_hist
                self._gap_hist = hist
            else:
                self._gap_hist[: hist.size] += hist
        last = np.concatenate((np.flatnonzero(~same), [sidx.size - 1]))
        self._last_seen[sidx[last]] = stime[last]
        # Lagged overlaps: all same-example pairs at most max_lag steps apart.  Pairs
        # j apart in sorted order can only qualify if the pair j-1 apart did.
        close = same & (step <= self._max_lag)
        lags = [step[close & new[1:]]]
        pos = np.flatnonzero(close) + 1
        j = 2
        while pos.size:
            pos = pos[pos >= j]
            d = stime[pos] - stime[pos - j]
            ok = (sidx[pos] == sidx[pos - j]) & (d <= self._max_lag)
            lags.append(d[ok & new[pos]])
            pos = pos[ok]
            j += 1
        self._lag_overlap += np.bincount(np.concatenate(lags), minlength=self._max_lag + 1)
