"""The headline of a failed battery: the most specific cause that explains the rejections.

Several tests usually reject together (shuffled batches fail the overlap, the
count and the gap tests at once).  The headline names the mechanism, in this
order of specificity, not the test with the smallest p-value:

1. sizes the declared sampler cannot produce, examples outside their group
   (exact violations);
2. seed or key reuse (repeated batches, excess overlap at a lag);
3. shuffling (too little overlap, counts too even, returns too regular), with
   a DataLoader with ``drop_last=False`` (fixed batch size, one short batch per
   epoch) or fixed-size shuffled batches (DataLoader / DistributedSampler)
   named when the batch sizes show it;
4. a real rate above the declared one (it also shifts the return gaps);
5. an undeclared cap (pile-up at the largest size, or a largest batch too small);
6. consecutive batches correlated; fixed-size batches; blocks of contiguous
   indices; then the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["diagnose"]


def _dir(t: Any) -> str:
    return str(t.details.get("direction", ""))


def _epoch_sizes(sizes: np.ndarray, n: int) -> str:
    """Describe fixed-size shuffled batches from the sizes alone ('' if they are not)."""
    if sizes.size < 2:
        return ""
    values, counts = np.unique(sizes, return_counts=True)
    main = int(values[np.argmax(counts)])
    if main <= 0:
        return ""
    if values.size == 1:
        return (
            f"every batch has exactly {main} examples and examples are not drawn independently: "
            "shuffled fixed-size batches (a DataLoader with shuffle=True, or a DistributedSampler)"
        )
    if values.size == 2:
        short = int(values[values != main][0])
        per_epoch = -(-n // main)
        n_short = int(counts[values != main][0])
        if short == n % main and abs(n_short - sizes.size / per_epoch) <= 1.0 + 0.01 * sizes.size:
            return (
                f"batches of {main} with a short batch of {short} once per epoch of {per_epoch} "
                "steps: a shuffled DataLoader with drop_last=False (each example used once per epoch)"
            )
    return ""


def diagnose(failures: Sequence[Any], sizes: np.ndarray, dataset_size: int) -> str:
    """One plain-words cause for the rejected tests (``failures``: TestResults)."""
    by: Mapping[str, Any] = {t.name: t for t in failures}
    for name in ("batch_size_support", "group_membership"):
        if name in by:
            return by[name].reason
    if "repeated_batches" in by:
        return by["repeated_batches"].reason
    if "lagged_overlap_scan" in by:
        return by["lagged_overlap_scan"].reason
    shuffling = [
        by[n]
        for n in ("consecutive_overlap", "inclusion_count_dispersion")
        if n in by and _dir(by[n]) == "low"
    ]
    # Returns too regular point to epochs too, unless a wrong rate explains them.
    if "return_gaps" in by and "total_inclusions" not in by:
        shuffling.append(by["return_gaps"])
    if shuffling:
        pattern = _epoch_sizes(sizes, dataset_size)
        if pattern:
            return f"shuffling, not independent sampling: {pattern}"
        return f"shuffling, not independent sampling: {shuffling[0].reason}"
    if "total_inclusions" in by:
        return by["total_inclusions"].reason
    if "truncation_scan" in by:
        return by["truncation_scan"].reason
    if "consecutive_overlap" in by and _dir(by["consecutive_overlap"]) == "high":
        return by["consecutive_overlap"].reason
    if "batch_size_dispersion" in by and _dir(by["batch_size_dispersion"]) == "low":
        return by["batch_size_dispersion"].reason
    if "adjacent_index_pairs" in by:
        return by["adjacent_index_pairs"].reason
    first = min(failures, key=lambda t: t.p_value)
    return first.reason
