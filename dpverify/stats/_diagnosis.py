"""The headline of a failed battery: the most specific cause that explains the rejections.

Several tests usually reject together (shuffled batches fail the overlap, the
count and the gap tests at once).  The headline names the mechanism, in this
order of specificity, not the test with the smallest p-value:

1. sizes the declared sampler cannot produce, examples outside their group
   (exact violations);
2. blocks of contiguous indices sampled together (they also make batches
   repeat and overlap at lags, so they come before seed reuse);
3. seed or key reuse (repeated batches, excess overlap at a lag);
4. shuffling (too little overlap, counts too even, returns too regular), with
   a DataLoader with ``drop_last=False`` (fixed batch size, one short batch per
   epoch) or fixed-size shuffled batches (DataLoader / DistributedSampler)
   named when the batch sizes show it;
5. examples sampled at different rates (counts too uneven given the batch
   sizes; this also shifts the return gaps and, for an oversampled group, the
   total), with the overall rate added when it is above the declared one too;
6. a real rate above the declared one (it also shifts the return gaps);
7. an undeclared cap (pile-up at the largest size, or a largest batch too small);
8. consecutive batches correlated; fixed-size batches; then the rest.
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


def _modest_lag_excess(scan: Any) -> bool:
    """A lagged-overlap excess below 2× the expected: what uneven rates give at every lag.

    Examples sampled more often than others co-occur more often at every lag
    (expected overlap ∝ Σ p_i², not N·q²), so the scan's maximum over lags is
    mildly high; a reused seed gives an overlap near the whole batch at its lag.
    """
    expected = float(scan.details.get("expected") or 0.0)
    return expected > 0.0 and scan.statistic < 2.0 * expected


def diagnose(failures: Sequence[Any], sizes: np.ndarray, dataset_size: int) -> str:
    """One plain-words cause for the rejected tests (``failures``: TestResults)."""
    by: Mapping[str, Any] = {t.name: t for t in failures}
    for name in ("batch_size_support", "group_membership"):
        if name in by:
            return by[name].reason
    if "adjacent_index_pairs" in by and _dir(by["adjacent_index_pairs"]) == "high":
        return by["adjacent_index_pairs"].reason
    if "repeated_batches" in by:
        return by["repeated_batches"].reason
    uneven = "inclusion_count_dispersion" in by and _dir(by["inclusion_count_dispersion"]) == "high"
    if "lagged_overlap_scan" in by and not (uneven and _modest_lag_excess(by["lagged_overlap_scan"])):
        return by["lagged_overlap_scan"].reason
    shuffling = [
        by[n]
        for n in ("consecutive_overlap", "inclusion_count_dispersion")
        if n in by and _dir(by[n]) == "low"
    ]
    # Returns too regular point to epochs too, unless a wrong rate (overall, or
    # for some examples) explains them.
    if "return_gaps" in by and "total_inclusions" not in by and not uneven:
        shuffling.append(by["return_gaps"])
    if shuffling:
        pattern = _epoch_sizes(sizes, dataset_size)
        if pattern:
            return f"shuffling, not independent sampling: {pattern}"
        return f"shuffling, not independent sampling: {shuffling[0].reason}"
    if uneven:
        reason = by["inclusion_count_dispersion"].reason
        if "total_inclusions" in by:
            reason += f"; overall, {by['total_inclusions'].reason}"
        return reason
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
