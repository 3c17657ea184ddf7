"""The headline of a failed battery: the most specific cause that explains the rejections.

Several tests usually reject together (shuffled batches fail the overlap, the
count and the gap tests at once).  The headline names the mechanism, in this
order of specificity, not the test with the smallest p-value:

1. sizes the declared sampler cannot produce, examples outside their group
   (exact violations);
2. blocks of contiguous indices sampled together (they also make batches
   repeat and overlap at lags, so they come before seed reuse) — unless the
   per-example counts explain the excess of neighbouring pairs (a contiguous
   part of the data set sampled more often, or never);
3. seed or key reuse (repeated batches, excess overlap at one lag) — an
   excess spread evenly over every lag is what uneven per-example rates
   give (an example in every batch), and is named as such;
4. shuffling (too little overlap, counts too even, returns too regular), with
   a DataLoader with ``drop_last=False`` (fixed batch size, one short batch per
   epoch of N mod B), torch's DistributedSampler (a short batch closing every
   epoch of N + pad examples, pad below the world size) or fixed-size
   shuffled batches named when the batch sizes show it;
5. examples sampled at different rates (counts too uneven given the batch
   sizes; this also shifts the return gaps and, for an oversampled group, the
   total), with the overall rate added when it is above the declared one too,
   and the extreme it comes from when there is one (examples never sampled,
   an example in far more batches than the rate allows);
6. a real rate above the declared one (it also shifts the return gaps);
7. fixed-size batches (every batch the same size) — before a cap, which a
   constant size also piles up against, with the overall rate added when it
   is wrong too — then an undeclared cap (pile-up at the largest size, or a
   largest batch too small);
8. consecutive batches correlated; sizes that vary too little; then the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from dpverify.stats._format import number

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
        return _distributed_sizes(sizes, n, main, short)
    return ""


def _distributed_sizes(sizes: np.ndarray, n: int, main: int, short: int) -> str:
    """Describe torch's DistributedSampler from the sizes alone ('' if they do not show it).

    Each epoch DistributedSampler shuffles once, pads the permutation to a
    multiple of the world size W by repeating its first ``pad < W`` entries,
    and rank r takes every W-th index; each rank's DataLoader cuts its share
    into batches of B.  The global batch of a step is then a contiguous chunk
    of the padded permutation: ``W·B`` examples, a short batch closing every
    epoch, and ``N + pad`` examples per epoch with ``0 < pad < W`` and W
    dividing both sizes.
    """
    where = np.flatnonzero(sizes == short)
    epoch = int(where[0]) + 1
    if epoch < 2 or not np.all((where + 1) % epoch == 0):
        return ""
    total = (epoch - 1) * main + short
    pad = total - n
    g = math.gcd(main, short)
    if not 0 < pad < g:
        return ""
    return (
        f"batches of {main} with a short batch of {short} closing every epoch of {epoch} steps, "
        f"{total:,} examples per epoch for N = {n:,} ({pad} used twice): a shuffled DistributedSampler "
        "(one permutation per epoch, padded to a multiple of the world size, rank r taking every "
        "world-size-th index)"
    )


def _fixed_size(sizes: np.ndarray, sampling_rate: float | None, n: int) -> str:
    """Describe batches that all have one size ('' unless they do, over ≥ 10 steps)."""
    if sizes.size < 10 or int(sizes.min()) != int(sizes.max()) or int(sizes[0]) <= 0:
        return ""
    b = int(sizes[0])
    spread = ""
    if sampling_rate is not None and 0.0 < sampling_rate < 1.0:
        sd = math.sqrt(n * sampling_rate * (1.0 - sampling_rate))
        spread = (
            f" (Poisson sampling at q = {number(sampling_rate)} gives sizes with sd {number(sd)})"
        )
    return (
        f"fixed-size batches, not Poisson sampling: all {number(sizes.size)} batches have exactly "
        f"{number(b)} examples{spread}: a sampler that draws a fixed number of examples per step "
        "(if its subsets are independent and uniform, declare sampler fixed_size to have it "
        "accounted as such)"
    )


def _modest_lag_excess(scan: Any) -> bool:
    """A lagged-overlap excess below 2× the expected: what uneven rates give at every lag.

    Examples sampled more often than others co-occur more often at every lag
    (expected overlap ∝ Σ p_i², not N·q²), so the scan's maximum over lags is
    mildly high; a reused seed gives an overlap near the whole batch at its lag.
    """
    expected = float(scan.details.get("expected") or 0.0)
    return expected > 0.0 and scan.statistic < 2.0 * expected


def _excess_even_over_lags(scan: Any, summary: Any) -> bool:
    """The best lag's overlap excess is no larger than the typical lag's.

    A seed reused every k steps makes batches k apart (and its multiples) share
    far more than other lags; examples sampled at uneven rates (one example in
    every batch) raise the overlap at *every* lag by about the same factor.
    Compares the largest observed/expected ratio over the scanned lags with
    their median, expected overlaps ``Σ_t b_t·b_{t+k}/N`` from the batch sizes.
    """
    if summary is None or scan.details.get("expected") in (None, 0):
        return False
    sizes = np.asarray(summary.sizes, dtype=np.float64)
    n = float(summary.dataset_size)
    top = int(scan.details.get("max_lag") or 0)
    ratios = []
    for k in range(2, top + 1):
        mean = float(np.dot(sizes[:-k], sizes[k:])) / n
        if mean > 0:
            ratios.append(float(summary.lag_overlap[k]) / mean)
    if len(ratios) < 3:
        return False
    typical = float(np.median(ratios))
    return typical > 1.0 and max(ratios) <= 1.5 * typical


def _adjacency_explained_by_counts(test: Any, summary: Any) -> bool:
    """Neighbouring index pairs no more frequent than the per-example counts predict.

    Sampled independently at rates ``p_i`` over T steps, indices i and i+1 are
    in the same batch ``T·p_i·p_{i+1}`` times in expectation, estimated
    without bias by ``c_i·c_{i+1}/T`` (independent counts).  Blocks sampled
    together exceed it by far; a contiguous part of the data set sampled at a
    higher rate (or the rest never) does not.
    """
    if summary is None or summary.steps == 0 or summary.seen.size < 2:
        return False
    seen = np.asarray(summary.seen)
    counts = np.asarray(summary.seen_counts, dtype=np.float64)
    nb = np.flatnonzero(np.diff(seen) == 1)
    predicted = float(np.dot(counts[nb], counts[nb + 1])) / summary.steps
    return float(test.statistic) <= predicted + 4.0 * math.sqrt(max(predicted, 1.0))


def _count_extreme(summary: Any) -> str:
    """The extreme behind uneven counts, in words ('' when none stands out).

    Never-sampled examples: under Poisson sampling with batch sizes b_t an
    example is missed by every step with probability ``Π_t (1 − b_t/N)``.  The
    most frequent example: ``c_max`` against Binomial(T, S/(N·T)), reported when
    fewer than 1 in 1000 data sets of this size would show one that high.
    """
    if summary is None or summary.steps == 0:
        return ""
    n = int(summary.dataset_size)
    sizes = np.asarray(summary.sizes, dtype=np.float64)
    if n <= 1 or np.any(sizes > n):
        return ""
    with np.errstate(divide="ignore"):
        expected_never = n * float(np.exp(np.sum(np.log1p(-sizes / n))))
    never = n - int(np.asarray(summary.seen).size)
    parts = []
    if never > 10 and never > 3.0 * expected_never + 5.0 * math.sqrt(max(expected_never, 1.0)):
        parts.append(
            f"{number(never)} of {number(n)} examples were never sampled ({number(expected_never)} "
            "expected): part of the data set unused, or dataset_size overstated?"
        )
    counts = np.asarray(summary.seen_counts)
    if counts.size:
        c_max = int(counts.max())
        rate = float(sizes.sum()) / (n * summary.steps)
        if n * float(stats.binom.sf(c_max - 1, summary.steps, rate)) < 1e-3:
            parts.append(
                f"an example was included in {number(c_max)} of {number(summary.steps)} steps "
                f"(about {number(rate * summary.steps)} expected)"
            )
    return "; ".join(parts)


def diagnose(
    failures: Sequence[Any],
    sizes: np.ndarray,
    dataset_size: int,
    summary: Any = None,
    sampling_rate: float | None = None,
) -> str:
    """One plain-words cause for the rejected tests (``failures``: TestResults).

    ``summary`` (the battery's :class:`StreamSummary`, optional) lets the
    headline tell uneven per-example rates from blocks and seed reuse, and
    name the extreme count behind them; ``sampling_rate`` (the declared q,
    optional) puts the size spread Poisson sampling would give beside
    fixed-size batches.
    """
    by: Mapping[str, Any] = {t.name: t for t in failures}
    for name in ("batch_size_support", "group_membership"):
        if name in by:
            return by[name].reason
    uneven = "inclusion_count_dispersion" in by and _dir(by["inclusion_count_dispersion"]) == "high"
    if "adjacent_index_pairs" in by and _dir(by["adjacent_index_pairs"]) == "high":
        if not (uneven and _adjacency_explained_by_counts(by["adjacent_index_pairs"], summary)):
            return by["adjacent_index_pairs"].reason
    if "repeated_batches" in by:
        return by["repeated_batches"].reason
    if "lagged_overlap_scan" in by and not (
        uneven
        and (
            _modest_lag_excess(by["lagged_overlap_scan"])
            or _excess_even_over_lags(by["lagged_overlap_scan"], summary)
        )
    ):
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
        extreme = _count_extreme(summary)
        if extreme:
            reason += f" ({extreme})"
        if "total_inclusions" in by:
            reason += f"; overall, {by['total_inclusions'].reason}"
        return reason
    size_tests = ("batch_size_dispersion", "batch_size_fit", "truncation_scan", "total_inclusions")
    if any(name in by for name in size_tests):
        fixed = _fixed_size(np.asarray(sizes), sampling_rate, dataset_size)
        if fixed:
            if "total_inclusions" in by:
                fixed += f"; overall, {by['total_inclusions'].reason}"
            return fixed
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
