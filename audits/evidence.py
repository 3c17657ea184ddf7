"""Aggregates of a ledger for the report's plots — never per-example data.

The report plots the realised batch sizes against Binomial(N, q), the
distribution of per-example inclusion counts against Binomial(T, q), and ε
against steps.  This module reduces a ledger to exactly what those plots need:
the batch size of each logical step, the *histogram* of inclusion counts (how
many examples were sampled k times, not which), and the accounting segments.
Nothing here identifies an example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AuditEvidence", "InclusionCounts", "collect_evidence"]

#: Largest N whose counts are one dense array (8 bytes per example).
DENSE_MAX_EXAMPLES = 1 << 24


class InclusionCounts:
    """Per-example inclusion counts accumulated batch by batch, for the count histogram.

    Dense (one int64 array of length N) up to :data:`DENSE_MAX_EXAMPLES`,
    else the examples seen only (sorted arrays merged chunk by chunk): memory
    O(min(N, examples seen)), never O(recorded indices).  Batches are
    buffered and counted ``chunk`` indices at a time (one ``bincount``).
    Indices outside [0, N) are ignored (the integrity check reports them).

    Args:
        dataset_size: N.
        chunk: indices buffered before they are counted.
    """

    def __init__(self, dataset_size: int, *, chunk: int = 1 << 20) -> None:
        self.n = int(dataset_size)
        self._chunk = int(chunk)
        self._dense = np.zeros(self.n, dtype=np.int64) if self.n <= DENSE_MAX_EXAMPLES else None
        self._seen = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    def add(self, indices: np.ndarray) -> None:
        """Count one batch (distinct indices)."""
        arr = np.asarray(indices, dtype=np.int64)
        self._pending.append(arr)
        self._pending_n += arr.size
        if self._pending_n >= self._chunk:
            self._flush()

    def add_counts(self, examples: np.ndarray, counts: np.ndarray) -> None:
        """Add counts already made elsewhere (``counts[j]`` inclusions of ``examples[j]``).

        ``examples`` are distinct, in [0, N); e.g. the sampling battery's
        per-example counts (:meth:`dpverify.stats.SamplingStream.kept_counts`).
        """
        self._flush()
        examples = np.asarray(examples, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        if self._dense is not None:
            self._dense[examples] += counts
            return
        merged = np.concatenate((self._seen, examples))
        uniq, inverse = np.unique(merged, return_inverse=True)
        total = np.zeros(uniq.size, dtype=np.int64)
        np.add.at(total, inverse, np.concatenate((self._counts, counts)))
        self._seen, self._counts = uniq, total

    def remove(self, indices: np.ndarray) -> None:
        """Un-count one batch counted before (a superseded execution)."""
        self._flush()
        arr = np.asarray(indices, dtype=np.int64)
        arr = arr[(arr >= 0) & (arr < self.n)]
        if self._dense is not None:
            self._dense[arr] -= 1
        else:
            self._counts[np.searchsorted(self._seen, arr)] -= 1

    def _flush(self) -> None:
        if not self._pending:
            return
        flat = np.concatenate(self._pending)
        self._pending, self._pending_n = [], 0
        if flat.size and (flat.min() < 0 or flat.max() >= self.n):
            flat = flat[(flat >= 0) & (flat < self.n)]
        if self._dense is not None:
            self._dense += np.bincount(flat, minlength=self.n)
            return
        idx, cnt = np.unique(flat, return_counts=True)
        merged = np.concatenate((self._seen, idx))
        uniq, inverse = np.unique(merged, return_inverse=True)
        total = np.zeros(uniq.size, dtype=np.int64)
        np.add.at(total, inverse, np.concatenate((self._counts, cnt)))
        self._seen, self._counts = uniq, total

    def histogram(self) -> np.ndarray:
        """``h[k]`` = examples counted exactly k times (``h[0]``: never sampled)."""
        self._flush()
        if self._dense is not None:
            return np.bincount(self._dense, minlength=1)
        positive = self._counts[self._counts > 0]
        hist = np.bincount(positive, minlength=1)
        hist[0] = self.n - positive.size
        return hist


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AuditEvidence:
    """What the report plots.

    Attributes:
        dataset_size: N.
        sampling_rate: q (header's).
        batch_sizes: realised batch size of each logical step (last execution).
        count_histogram: ``count_histogram[k]`` = number of examples included
            in exactly k logical steps.
        delta: δ at which ε is plotted.
        segments: accounting segments of the executed steps (``Segment`` objects),
            or empty when accounting was not possible.
        accounting_kwargs: neighbouring relation, sampler and its parameters.
    """

    dataset_size: int
    sampling_rate: float
    batch_sizes: np.ndarray
    count_histogram: np.ndarray
    delta: float
    segments: tuple[Any, ...] = ()
    accounting_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def logical_steps(self) -> int:
        """T, the number of distinct logical steps."""
        return int(self.batch_sizes.size)


def collect_evidence(
    ledger: Any,
    *,
    steps: Sequence[Any],
    delta: float,
    counts: InclusionCounts | None = None,
) -> AuditEvidence:
    """Reduce ``ledger`` to the aggregates the report plots.

    Args:
        ledger: a read ledger (for its header).
        steps: the last execution of each logical step, in step order.
        delta: δ of the audited claim.
        counts: the inclusion counts of exactly ``steps``, accumulated while
            the ledger was streamed (then no index array is read here);
            default: counted here from ``steps``.

    Returns:
        The evidence; O(recorded indices) time, memory O(min(N, examples
        seen) + T) with ``counts``, O(recorded indices) without.
    """
    header = ledger.header
    n = header.dataset_size
    sizes = np.empty(len(steps), dtype=np.int64)
    for i, s in enumerate(steps):
        sizes[i] = s.indices.size
    if counts is not None:
        histogram = counts.histogram()
    else:
        # Counts of the examples seen only (memory O(recorded indices), not O(N)):
        # indices are distinct within a step, so an example's count is its multiplicity.
        flat = [s.indices[s.indices < n] for s in steps]
        seen = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
        _, seen_counts = np.unique(seen, return_counts=True)
        histogram = np.bincount(seen_counts, minlength=1)
        histogram[0] = n - seen_counts.size  # examples never sampled
    segments: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    try:
        from dpverify import accounting

        segments = tuple(accounting.segments_from_ledger(ledger))
        kwargs = accounting.accounting_kwargs(header)
    except Exception:  # plots degrade gracefully; the privacy check reports why
        segments = ()
    return AuditEvidence(
        dataset_size=n,
        sampling_rate=header.sampling_rate,
        batch_sizes=sizes,
        count_histogram=histogram,
        delta=delta,
        segments=segments,
        accounting_kwargs=kwargs,
    )
