"""The Poisson-compliance battery: ten tests, one streaming pass, family-wise control.

Under Poisson sampling at rate q, the T×N inclusion matrix of a run has
i.i.d. Bernoulli(q) entries.  :func:`run_battery` streams the batches once
(memory O(N + T), see :mod:`dpverify.stats._stream`) and runs:

======  ============================  ==============================================
 T1     ``batch_size_dispersion``     fixed batch sizes; groups drawn together
 T2     ``batch_size_fit``            wrong q; reshaped or capped size distribution
 T3     ``inclusion_count_dispersion`` epoch-based shuffling; unequal rates
 T4     ``total_inclusions``          biased q
 T5     ``consecutive_overlap``       shuffling (disjoint consecutive batches)
 T6     ``return_gaps``               epoch structure; periodic reuse
 T7     ``lagged_overlap_scan``       seed / key reused a few steps apart
 T8     ``adjacent_index_pairs``      contiguous blocks sampled for I/O speed
 T9     ``truncation_scan``           undeclared caps; batches above a declared cap
 T10    ``repeated_batches``          seed reused at any distance
======  ============================  ==============================================

The family-wise false-positive rate is controlled at α with Holm's weighted
step-down procedure: every test has weight 1 except the two whose statistics
are nearly all-or-nothing, ``truncation_scan`` (:data:`TRUNCATION_SCAN_WEIGHT`)
and ``repeated_batches`` (:data:`REPEATED_BATCHES_WEIGHT`); the other tests
then use the α those two could not spend (Holm 1979, "A simple sequentially rejective multiple test
procedure", Scand. J. Statist. 6:65–70).  Statistics, null distributions and
what each test catches are documented in ``docs/statistics.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import special

from dpverify._validate import check_int, check_probability
from dpverify.errors import InvalidArgument
from dpverify.stats._count_tests import inclusion_count_dispersion, return_gaps
from dpverify.stats._nulls import SizeLaw
from dpverify.stats._pair_tests import (
    adjacent_index_pairs,
    consecutive_overlap,
    lagged_overlap_scan,
    repeated_batches,
)
from dpverify.stats._raw import RawTest
from dpverify.stats._results import BatteryResult, TestResult
from dpverify.stats._size_tests import (
    batch_size_dispersion,
    batch_size_fit,
    total_inclusions,
    truncation_scan,
)
from dpverify.stats._stream import BatchStream, StreamSummary

__all__ = [
    "DEFAULT_MAX_LAG",
    "REPEATED_BATCHES_WEIGHT",
    "TEST_NAMES",
    "TRUNCATION_SCAN_WEIGHT",
    "battery_from_ledger",
    "holm",
    "run_battery",
]

#: Largest lag of the lagged-overlap scan (T7): the window of recent batches kept.
DEFAULT_MAX_LAG = 64

#: Holm weight of ``truncation_scan``: its statistic (the largest batch) takes
#: few values, so it can spend only a fraction of an equal share of α under the
#: null, while a real cap c drives its p-value to about F(c)^T.
TRUNCATION_SCAN_WEIGHT = 0.25

#: Holm weight of ``repeated_batches``: under the null it rejects with
#: probability about C(T,2)·P(two batches equal), astronomically small.
REPEATED_BATCHES_WEIGHT = 0.01

#: The battery's tests, in order.
TEST_NAMES = (
    "batch_size_dispersion",
    "batch_size_fit",
    "inclusion_count_dispersion",
    "total_inclusions",
    "consecutive_overlap",
    "return_gaps",
    "lagged_overlap_scan",
    "adjacent_index_pairs",
    "truncation_scan",
    "repeated_batches",
)


def holm(
    p_values: Iterable[float], alpha: float, weights: Iterable[float] | None = None
) -> tuple[list[bool], list[float]]:
    """Weighted Holm step-down procedure: ``(rejected, adjusted p-values)`` in input order.

    With weights ``w_i > 0`` (all 1: plain Holm), order the tests by ``p_i/w_i``;
    at each stage, with ``R`` the tests not yet rejected, reject the next test
    if ``p_i <= α w_i / Σ_{j∈R} w_j``, otherwise stop.  The adjusted p-value is
    the running maximum of ``min(1, p_i Σ_{j∈R} w_j / w_i)``; a test is rejected
    iff its adjusted p-value is ``<= α``.  Controls the family-wise error rate
    at α under any dependence (Holm 1979, §4).
    """
    ps = [float(p) for p in p_values]
    ws = [1.0] * len(ps) if weights is None else [float(w) for w in weights]
    if len(ws) != len(ps) or any(not w > 0 for w in ws):
        raise InvalidArgument("weights must be positive, one per p-value")
    order = sorted(range(len(ps)), key=lambda i: ps[i] / ws[i])
    remaining = sum(ws)
    adjusted = [1.0] * len(ps)
    running = 0.0
    for i in order:
        running = max(running, min(1.0, ps[i] * remaining / ws[i]))
        adjusted[i] = running
        remaining -= ws[i]
    return [a <= alpha for a in adjusted], adjusted


def _min_detectable_bias(n: int, q: float, steps: int, alpha: float, k: int) -> float:
    """Relative bias in q that T4 detects with power 0.8 at level α/K (two-sided)."""
    expected = n * steps * q
    if expected <= 0 or q >= 1.0:
        return math.inf
    z = -float(special.ndtri(alpha / (2.0 * k))) - float(special.ndtri(0.2))
    return float(z * math.sqrt((1.0 - q) / expected))


def _run_tests(summary: StreamSummary, law: SizeLaw) -> list[RawTest]:
    sizes = summary.sizes
    return [
        batch_size_dispersion(sizes, law),
        batch_size_fit(sizes, law),
        inclusion_count_dispersion(summary),
        total_inclusions(sizes, law),
        consecutive_overlap(summary),
        return_gaps(summary, law),
        lagged_overlap_scan(summary),
        adjacent_index_pairs(summary),
        dataclasses.replace(truncation_scan(sizes, law), weight=TRUNCATION_SCAN_WEIGHT),
        dataclasses.replace(repeated_batches(summary, law), weight=REPEATED_BATCHES_WEIGHT),
    ]


def run_battery(
    batches: Iterable[np.ndarray],
    *,
    dataset_size: int,
    sampling_rate: float,
    alpha: float = 1e-3,
    cap: int | None = None,
    seed: int = 0,
    max_lag: int = DEFAULT_MAX_LAG,
) -> BatteryResult:
    """Test whether ``batches`` look like Poisson sampling at rate ``sampling_rate``.

    One pass over ``batches`` (any iterable, e.g. a generator reading a
    ledger), memory O(N + T + window).  Tests that do not have enough data
    for their null approximation report ``meaningful=False`` and p-value 1
    (except exact evidence such as a batch above the cap).

    Args:
        batches: per logical step, the sorted distinct integer indices sampled.
        dataset_size: N.
        sampling_rate: q, the declared inclusion probability.
        alpha: family-wise false-positive rate, in (0, 1).
        cap: declared maximum batch size (Poisson truncated at ``cap``): the
            null becomes ``min(Binomial(N, q), cap)`` and a larger batch fails.
        seed: seed of the battery's own randomness (the weights of the batch
            hash); results do not depend on it except with probability 2⁻⁶⁴.
        max_lag: largest lag scanned by ``lagged_overlap_scan``.

    Returns:
        A :class:`BatteryResult`; ``.passed`` is false iff Holm rejects a test.

    Raises:
        InvalidArgument: bad arguments, or a batch that is not sorted, has
            repeats, or holds an index outside ``[0, N)``.

    Example:
        >>> from dpverify.samplers import PoissonSampler
        >>> s = PoissonSampler(2000, 0.05, seed=1)
        >>> run_battery((s.sample(t) for t in range(200)), dataset_size=2000, sampling_rate=0.05).passed
        True
    """
    n = check_int("dataset_size", dataset_size, minimum=1)
    q = check_probability("sampling_rate", sampling_rate)
    alpha = check_probability("alpha", alpha, allow_one=False)
    if cap is not None:
        cap = check_int("cap", cap, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("max_lag", max_lag, minimum=1)
    stream = BatchStream(n, max_lag=max_lag, hash_seed=seed)
    for batch in batches:
        stream.add(batch)
    summary = stream.finish()
    return _assemble(summary, SizeLaw(dataset_size=n, sampling_rate=q, cap=cap), alpha)


def _assemble(summary: StreamSummary, law: SizeLaw, alpha: float) -> BatteryResult:
    raws = _run_tests(summary, law)
    rejected, adjusted = holm([r.p_value for r in raws], alpha, [r.weight for r in raws])
    tests = []
    for raw, rej, adj in zip(raws, rejected, adjusted, strict=True):
        if rej:
            reason = raw.failure
        elif not raw.meaningful:
            reason = raw.note
        else:
            reason = f"consistent with Poisson sampling (p={raw.p_value:.3g})"
        tests.append(
            TestResult(
                name=raw.name,
                statistic=float(raw.statistic),
                p_value=float(raw.p_value),
                sensitive_to=raw.sensitive_to,
                meaningful=raw.meaningful,
                rejected=rej,
                reason=reason,
                adjusted_p_value=float(adj),
                details=dict(raw.details),
            )
        )
    n, q = law.dataset_size, law.sampling_rate
    return BatteryResult(
        tests=tuple(tests),
        alpha=alpha,
        correction="holm",
        dataset_size=n,
        sampling_rate=q,
        cap=law.cap,
        steps=summary.steps,
        indices=summary.total,
        min_detectable_relative_bias=_min_detectable_bias(n, q, summary.steps, alpha, len(tests)),
    )


def _final_executions(steps: Any) -> list[Any]:
    """One execution per logical step index, the last one, in step order."""
    last: dict[int, Any] = {}
    for s in steps:
        last[int(s.step)] = s
    return [last[k] for k in sorted(last)]


def _check_steps(numbers: list[int], rates: dict[int, float], q: float) -> None:
    for step, rate in rates.items():
        if not math.isclose(rate, q, rel_tol=1e-12):
            raise InvalidArgument(
                f"step {step} declares sampling_rate={rate} but the header has {q}: "
                "the battery does not support rates that change during a run yet"
            )
    for expected, got in enumerate(numbers):
        if got != expected:
            raise InvalidArgument(f"the ledger has no step {expected}: steps must be 0, 1, 2, ...")


def _header_null(header: Any) -> tuple[int, float, int | None]:
    cap = (header.sampler_params or {}).get("cap")
    return int(header.dataset_size), float(header.sampling_rate), None if cap is None else int(cap)


def _battery_from_path(path: Any, alpha: float, seed: int) -> BatteryResult:
    """Two streaming passes: find each step's last execution, then feed those in order.

    Memory stays O(N + T) however large the ledger; when the last executions
    are not in step order (a run resumed and ended before reaching its
    earlier last step) the ledger is read into memory instead.
    """
    from dpverify.ledger import RunHeader, Step, iter_records, read_ledger

    header = None
    numbers: list[int] = []  # step index of each Step record, in order
    rates: dict[int, float] = {}
    for record in iter_records(path):
        if isinstance(record, RunHeader):
            header = record
        elif isinstance(record, Step):
            numbers.append(record.step)
            if record.sampling_rate is not None:
                rates[record.step] = record.sampling_rate
    if header is None:  # pragma: no cover - the reader guarantees a header
        raise InvalidArgument("the ledger has no run header")
    n, q, cap = _header_null(header)
    last = {step: ordinal for ordinal, step in enumerate(numbers)}
    ordinals = [last[k] for k in sorted(last)]
    if any(b <= a for a, b in itertools.pairwise(ordinals)):
        return battery_from_ledger(read_ledger(path), alpha=alpha, seed=seed)
    _check_steps(sorted(last), rates, q)
    keep = set(ordinals)

    def batches() -> Iterable[np.ndarray]:
        ordinal = -1
        for record in iter_records(path):
            if isinstance(record, Step):
                ordinal += 1
                if ordinal in keep:
                    yield record.indices

    return run_battery(batches(), dataset_size=n, sampling_rate=q, alpha=alpha, cap=cap, seed=seed)


def battery_from_ledger(
    ledger_or_path: Any, *, alpha: float = 1e-3, seed: int = 0
) -> BatteryResult:
    """Run the battery on a ledger's recorded batches against its header's claim.

    N, q and the cap (``sampler_params["cap"]``, if any) come from the run
    header.  Steps re-executed after a resume re-draw the same batch by
    design, so one execution per logical step index is used (the last).

    Args:
        ledger_or_path: a ``Ledger`` from :func:`dpverify.ledger.read_ledger`
            (anything with ``.header`` and ``.steps``), or a ledger / run
            directory path, which is streamed (two passes, memory O(N + T)).
        alpha: family-wise false-positive rate.
        seed: see :func:`run_battery`.

    Raises:
        UnusableInput, LedgerCorrupt: from the ledger reader.
        InvalidArgument: steps declare a sampling rate other than the header's
            (heterogeneous rates are not supported by the battery yet), or a
            logical step index is missing.
    """
    if isinstance(ledger_or_path, (str, os.PathLike)):
        return _battery_from_path(ledger_or_path, alpha, seed)
    n, q, cap = _header_null(ledger_or_path.header)
    steps = _final_executions(ledger_or_path.steps)
    rates = {s.step: s.sampling_rate for s in steps if s.sampling_rate is not None}
    _check_steps([s.step for s in steps], rates, q)
    return run_battery(
        (s.indices for s in steps),
        dataset_size=n,
        sampling_rate=q,
        alpha=alpha,
        cap=cap,
        seed=seed,
    )
