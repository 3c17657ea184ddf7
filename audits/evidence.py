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

__all__ = ["AuditEvidence", "collect_evidence"]


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


def collect_evidence(ledger: Any, *, steps: Sequence[Any], delta: float) -> AuditEvidence:
    """Reduce ``ledger`` to the aggregates the report plots.

    Args:
        ledger: a read ledger (for its header).
        steps: the last execution of each logical step, in step order.
        delta: δ of the audited claim.

    Returns:
        The evidence; O(recorded indices) time and memory, whatever N is.
    """
    header = ledger.header
    n = header.dataset_size
    sizes = np.empty(len(steps), dtype=np.int64)
    for i, s in enumerate(steps):
        sizes[i] = s.indices.size
    # Counts of the examples seen only (memory O(recorded indices), not O(N)):
    # indices are distinct within a step, so an example's count is its multiplicity.
    flat = [s.indices[s.indices < n] for s in steps]
    seen = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    _, counts = np.unique(seen, return_counts=True)
    histogram = np.bincount(counts, minlength=1)
    histogram[0] = n - counts.size  # examples never sampled
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
