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
        The evidence; O(N + number of recorded indices) time, O(N + T) memory.
    """
    header = ledger.header
    n = header.dataset_size
    counts = np.zeros(n, dtype=np.int64)
    sizes = np.empty(len(steps), dtype=np.int64)
    for i, s in enumerate(steps):
        sizes[i] = s.indices.size
        counts[s.indices[s.indices < n]] += 1  # indices are distinct within a step
    histogram = np.bincount(counts, minlength=1)
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
