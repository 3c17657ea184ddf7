"""The battery over a ledger: every execution, per segment of constant recorded rate.

* **Every execution is audited.**  Steps executed again after a resume are
  compared with their first execution.  A re-execution that reproduces its
  batch adds nothing (it is the same draw) and is left out; one that does not
  is a new draw and enters the battery with its own batch — and, when the
  run's sampler is step-addressable (``sample(t)`` a pure function of the seed
  and t, as every dpverify sampler is), it is also a finding: the resumed run
  did not draw the batches the sampler defines.
* **Per-step rates are tested, not trusted.**  The kept executions are cut into
  segments of constant recorded ``sampling_rate`` (rates equal up to float32
  rounding, relative 2⁻²³, are one rate; a step without a rate has the
  header's).  Each segment gets its own battery against its own rate, at level
  α/m for m segments (Bonferroni), so a recorded rate below what the indices
  show refutes that segment.  A segment with fewer than
  :data:`MIN_SEGMENT_BATCHES` batches or no meaningful test is reported as too
  short (its rate unverified), never silently passed; it can still fail.

Memory: the plan keeps O(T) numbers; batteries stream (two passes over a path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from dpverify._masked import compiled_steps
from dpverify._validate import check_int, check_probability
from dpverify.errors import InvalidArgument
from dpverify.stats._declared import FLOAT32_REL, NULL_SAMPLERS, DeclaredNull
from dpverify.stats._results import BatteryResult
from dpverify.stats._stream import DENSE_MAX_EXAMPLES, BatchStream, StreamSummary
from dpverify.stats.battery import DEFAULT_MAX_LAG, EXACT_TEST_NAMES, _assemble, _window

__all__ = [
    "LedgerSampling",
    "SamplingStream",
    "SegmentResult",
    "battery_from_ledger",
    "declared_null",
    "sampling_from_ledger",
    "step_addressable",
]

#: A segment with fewer batches only tests gross violations: it is reported as too short.
MIN_SEGMENT_BATCHES = 20

#: Indices a segment's stream buffers per chunk (the first full one starts the helper): 2²³
#: (≈ 512 ImageNet steps, 64 MiB as int64) for the compiled loop, which walks each chunk one
#: cache-sized block of examples at a time (more steps per block visit, less memory traffic);
#: 2²⁰ for the numpy loop, whose temporaries should stay in the cache.
STREAM_CHUNK: int | None = None

#: Tests whose evidence is exact: they run (and can fail) however short a segment is.
EXACT_TESTS = EXACT_TEST_NAMES


def declared_null(header: Any, sampling_rate: float | None = None) -> DeclaredNull:
    """The null of a run header (sampler names are case-insensitive)."""
    name = str(header.sampler).lower()
    if name not in NULL_SAMPLERS:
        raise InvalidArgument(
            f"sampler={header.sampler!r} has no sampling null (known: {', '.join(NULL_SAMPLERS)})"
        )
    params = dict(header.sampler_params or {})
    return DeclaredNull(
        dataset_size=int(header.dataset_size),
        sampling_rate=float(header.sampling_rate if sampling_rate is None else sampling_rate),
        sampler=name,
        cap=params.get("cap") if name == "truncated_poisson" else None,
        batch_size=params.get("batch_size") if name == "fixed_size" else None,
        cycle_length=int(params.get("cycle_length", 1)) if name == "cyclic_poisson" else 1,
    )


def step_addressable(header: Any) -> bool:
    """Whether the run's batches are a pure function of (seed, step).

    True for runs written by dpverify's own trainers (the header's ``software``
    records ``dpverify`` and ``jaxlib`` and no foreign framework); runs imported
    from other frameworks (Opacus, jax_privacy iterators) may legitimately draw
    a fresh batch when a step is re-executed.  ``sampler_params`` may state it
    explicitly with ``{"step_addressable": true|false}``.
    """
    explicit = (header.sampler_params or {}).get("step_addressable")
    if isinstance(explicit, bool):
        return explicit
    software = {str(k).lower() for k in (header.software or {})}
    foreign = {"torch", "opacus", "jax_privacy", "jax-privacy", "tensorflow"}
    return "dpverify" in software and "jaxlib" in software and not (software & foreign)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentResult:
    """The battery on one segment of constant recorded sampling rate.

    Attributes:
        first_step, last_step: logical step indices of the segment's first and
            last batch.
        batches: batches tested (kept executions).
        sampling_rate: the recorded rate of the segment.
        status: ``"pass"``, ``"fail"`` or ``"too_short"`` (no meaningful test
            beyond the exact ones; nothing was established about its rate).
        battery: the segment's :class:`BatteryResult`.
    """

    first_step: int
    last_step: int
    batches: int
    sampling_rate: float
    status: str
    battery: BatteryResult

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        b = self.battery
        return {
            "first_step": self.first_step,
            "last_step": self.last_step,
            "batches": self.batches,
            "sampling_rate": self.sampling_rate,
            "status": self.status,
            "passed": self.passed,
            "rate_verified": self.passed,
            "observed_rate": b.observed_rate,
            "conservative": b.conservative,
            "diagnosis": b.diagnosis,
            "failures": [t.name for t in b.failures],
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class LedgerSampling:
    """The sampling battery over a whole ledger.

    Attributes:
        null: the header's declared null.
        segments: one :class:`SegmentResult` per segment of constant rate.
        findings: plain-words violations outside the battery (a re-executed
            step of a step-addressable sampler that drew another batch).
        executions: step records in the ledger; logical_steps: distinct step
            indices; reproduced: re-executions equal to their first execution
            (left out); redrawn: re-executions with a batch of their own (kept).
        alpha: family-wise level (split evenly over the segments).
    """

    null: DeclaredNull
    segments: tuple[SegmentResult, ...]
    findings: tuple[str, ...]
    executions: int
    logical_steps: int
    reproduced: int
    redrawn: int
    alpha: float

    @property
    def passed(self) -> bool:
        return not self.findings and all(s.status != "fail" for s in self.segments)

    @property
    def rates_verified(self) -> bool:
        """Every segment passed with a meaningful battery: recorded rates may be used."""
        return bool(self.segments) and all(s.passed for s in self.segments) and not self.findings


@dataclasses.dataclass
class _Plan:
    keep: list[bool]
    segment_of: list[int]
    rates: list[float]
    bounds: list[tuple[int, int, int]]  # (first step, last step, batches) per segment
    findings: list[str]
    logical: int
    reproduced: int
    redrawn: int


def _digest(indices: np.ndarray) -> bytes:
    """SHA-256 of the batch: its indices as int32 when they fit (half the bytes), else int64.

    A width tag goes first, so the encoding is unambiguous and equal batches
    always digest alike (SHA-256 runs on the CPU's SHA extensions where there
    are, a few times faster per byte than BLAKE2 here: docs/scale.md).
    """
    arr = np.asarray(indices)
    h = hashlib.sha256()
    if arr.size == 0 or (int(arr.min()) >= 0 and int(arr.max()) < 1 << 31):
        h.update(b"i4")
        h.update(np.ascontiguousarray(arr, dtype=np.int32).data.cast("B"))
    else:
        h.update(b"i8")
        h.update(np.ascontiguousarray(arr, dtype=np.int64).data.cast("B"))
    return h.digest()


class _Planner:
    """The plan built one execution at a time (it only looks back): kept or not, segment."""

    def __init__(self, header: Any) -> None:
        self.q0 = float(header.sampling_rate)
        self.first: dict[int, bytes] = {}
        self.keep: list[bool] = []
        self.rates: list[float] = []
        self.segment_of: list[int] = []
        self.bounds: list[list[int]] = []
        self.mismatched: list[int] = []
        self.reproduced = self.redrawn = 0
        self.seg_rate: float | None = None

    def add(self, record: Any) -> int:
        """Plan one execution; its segment, or -1 when it is left out (a reproduced batch)."""
        step = int(record.step)
        rate = float(record.sampling_rate) if record.sampling_rate is not None else self.q0
        digest = _digest(record.indices)
        kept = True
        if step in self.first:
            if self.first[step] == digest:
                kept = False
                self.reproduced += 1
            else:
                self.redrawn += 1
                self.mismatched.append(step)
        else:
            self.first[step] = digest
        self.keep.append(kept)
        self.rates.append(rate)
        if not kept:
            self.segment_of.append(-1)
            return -1
        seg_rate = self.seg_rate
        if seg_rate is None or not math.isclose(rate, seg_rate, rel_tol=FLOAT32_REL, abs_tol=0.0):
            self.seg_rate = rate
            self.bounds.append([step, step, 0])
        self.bounds[-1][1] = step
        self.bounds[-1][2] += 1
        self.segment_of.append(len(self.bounds) - 1)
        return len(self.bounds) - 1

    def plan(self, addressable: bool) -> _Plan:
        findings: list[str] = []
        mismatched = self.mismatched
        if mismatched and addressable:
            shown = ", ".join(str(s) for s in mismatched[:5]) + (" ..." if len(mismatched) > 5 else "")
            findings.append(
                f"{len(mismatched)} re-executed step(s) drew a different batch than their first "
                f"execution (step {shown}): the sampler is step-addressable, so a resumed run must "
                "redraw the same batches; the batches were changed or the sampler was re-seeded"
            )
        return _Plan(
            keep=self.keep,
            segment_of=self.segment_of,
            rates=self.rates,
            bounds=[tuple(b) for b in self.bounds],  # type: ignore[misc]
            findings=findings,
            logical=len(self.first),
            reproduced=self.reproduced,
            redrawn=self.redrawn,
        )


def _plan(steps: Iterable[Any], header: Any, addressable: bool) -> _Plan:
    planner = _Planner(header)
    for record in steps:
        planner.add(record)
    return planner.plan(addressable)


def _steps_of(ledger_or_path: Any) -> tuple[Any, Any]:
    """(header, a callable returning a fresh iterator over step records)."""
    if isinstance(ledger_or_path, (str, os.PathLike)):
        from dpverify.ledger import RunHeader, Step, iter_records

        header = None
        for record in iter_records(ledger_or_path):
            if isinstance(record, RunHeader):
                header = record
                break
        if header is None:  # pragma: no cover - the reader guarantees a header
            raise InvalidArgument("the ledger has no run header")

        def steps() -> Iterator[Any]:
            return (r for r in iter_records(ledger_or_path) if isinstance(r, Step))

        return header, steps
    return ledger_or_path.header, lambda: iter(ledger_or_path.steps)


class SamplingStream:
    """:func:`sampling_from_ledger` fed one execution at a time, in ledger order.

    Each execution is planned as it arrives (the plan only looks back: a
    re-execution is compared with the first execution of its step; a new
    segment starts where the recorded rate changes) and its batch goes
    straight into its segment's streaming battery; a finished segment keeps
    only its :class:`~dpverify.stats._stream.StreamSummary` (O(N + T)), and
    :meth:`finish` runs every segment's tests at level α/m, m known only then.
    The result is the same as :func:`sampling_from_ledger`'s.

    Args: as :func:`sampling_from_ledger`, with the run ``header``, and
        processes: 2 lets a helper process take part of the examples of the
            per-example work (:mod:`dpverify._masked_helper`) once a segment is
            large (a whole chunk of recorded indices), 1 keeps it in this
            process; ``None``: 1 where the compiled loop runs (numba: a helper
            did not pay, docs/scale.md), else 2 when this process may use two
            CPUs or more.  The result is the same.

    Raises:
        InvalidArgument: the header's sampler has no null, or bad parameters.
    """

    def __init__(
        self,
        header: Any,
        *,
        alpha: float = 1e-3,
        seed: int = 0,
        step_addressable_run: bool | None = None,
        max_lag: int = DEFAULT_MAX_LAG,
        processes: int | None = None,
    ) -> None:
        from dpverify._masked_helper import RangeHelper, available_cpus

        self._alpha = check_probability("alpha", alpha, allow_one=False)
        if processes is None:
            processes = 2 if compiled_steps() is None and available_cpus() >= 2 else 1
        check_int("processes", processes, minimum=1)
        self._helper = RangeHelper() if processes >= 2 else None
        self._seed = check_int("seed", seed, minimum=0)
        self._max_lag = check_int("max_lag", max_lag, minimum=1)
        self._header = header
        self._null = declared_null(header)
        self._addressable = (
            step_addressable(header) if step_addressable_run is None else step_addressable_run
        )
        self._planner = _Planner(header)
        self._segment = -1
        self._stream: BatchStream | None = None
        self._done: list[StreamSummary] = []
        # per-example inclusion counts over the kept executions, all segments together
        n = int(header.dataset_size)
        self._dense_counts = n <= DENSE_MAX_EXAMPLES
        self._count_idx = np.zeros(0, dtype=np.int64)
        self._count_val = np.zeros(n if self._dense_counts else 0, dtype=np.int64)

    def add(self, record: Any) -> None:
        """Plan one execution (a step record) and feed its batch to its segment."""
        seg = self._planner.add(record)
        if seg < 0:
            return
        if seg != self._segment:
            self._close_segment()
            null = declared_null(self._header, self._planner.seg_rate)
            self._stream = BatchStream(
                null.dataset_size,
                max_lag=_window(null, self._max_lag),
                hash_seed=self._seed,
                chunk_indices=STREAM_CHUNK or (1 << 23 if compiled_steps() else 1 << 20),
                helper=self._helper,
            )
            self._segment = seg
        assert self._stream is not None
        self._stream.add(record.indices)

    def _close_segment(self) -> None:
        if self._stream is not None:
            summary = self._stream.finish()
            self._done.append(summary)
            self._stream = None
            if self._dense_counts:
                self._count_val[summary.seen] += summary.seen_counts
            else:
                merged = np.concatenate((self._count_idx, summary.seen))
                values = np.concatenate((self._count_val, summary.seen_counts))
                self._count_idx, inverse = np.unique(merged, return_inverse=True)
                self._count_val = np.bincount(inverse, weights=values).astype(np.int64)

    def kept_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-example inclusion counts over the executions fed to the battery.

        ``(examples, counts)``: the examples included at least once (increasing)
        and how often, over every kept execution (a re-execution that reproduced
        its batch is left out, see :meth:`kept`).  The batteries' own per-example
        state, so the audit's report needs no second count.  Call after the last
        :meth:`add`.
        """
        self._close_segment()
        if self._dense_counts:
            where = np.flatnonzero(self._count_val)
            return where, self._count_val[where]
        keep = self._count_val > 0
        return self._count_idx[keep], self._count_val[keep]

    def kept(self) -> list[bool]:
        """For each execution added, in order: whether its batch entered the battery."""
        return list(self._planner.keep)

    def finish(self) -> LedgerSampling:
        """Every segment's battery at α/m; the stream can not be extended after."""
        try:
            self._close_segment()
        finally:
            if self._helper is not None:
                self._helper.shutdown()
        plan = self._planner.plan(self._addressable)
        level = self._alpha / max(1, len(plan.bounds))
        segments: list[SegmentResult] = []
        for k, ((lo, hi, count), summary) in enumerate(zip(plan.bounds, self._done, strict=True)):
            rate = next(r for r, s in zip(plan.rates, plan.segment_of, strict=True) if s == k)
            result = _assemble(summary, declared_null(self._header, rate), level, seed=self._seed)
            if not result.passed:
                status = "fail"
            elif count < MIN_SEGMENT_BATCHES or not any(
                t.meaningful for t in result.tests if t.name not in EXACT_TESTS
            ):
                status = "too_short"
            else:
                status = "pass"
            segments.append(
                SegmentResult(
                    first_step=lo, last_step=hi, batches=count, sampling_rate=rate,
                    status=status, battery=result,
                )
            )  # fmt: skip
        self._done = []
        return LedgerSampling(
            null=self._null,
            segments=tuple(segments),
            findings=tuple(plan.findings),
            executions=len(plan.keep),
            logical_steps=plan.logical,
            reproduced=plan.reproduced,
            redrawn=plan.redrawn,
            alpha=self._alpha,
        )


def sampling_from_ledger(
    ledger_or_path: Any,
    *,
    alpha: float = 1e-3,
    seed: int = 0,
    step_addressable_run: bool | None = None,
    max_lag: int = DEFAULT_MAX_LAG,
) -> LedgerSampling:
    """Run the battery over every execution of a ledger, per segment of constant rate.

    Args:
        ledger_or_path: a read ledger (``.header``, ``.steps``) or a ledger /
            run directory path (streamed in one pass: memory O(N + T) per
            segment of constant rate).
        alpha: family-wise false-positive rate over all segments.
        seed: see :func:`dpverify.stats.run_battery`.
        step_addressable_run: override :func:`step_addressable`.
        max_lag: see :func:`dpverify.stats.run_battery`.

    Raises:
        InvalidArgument: the header's sampler has no null, or bad parameters.
    """
    header, steps = _steps_of(ledger_or_path)
    stream = SamplingStream(
        header, alpha=alpha, seed=seed, step_addressable_run=step_addressable_run, max_lag=max_lag
    )
    for record in steps():
        stream.add(record)
    return stream.finish()


def battery_from_ledger(
    ledger_or_path: Any, *, alpha: float = 1e-3, seed: int = 0
) -> BatteryResult:
    """The battery of a ledger with one recorded rate (see :func:`sampling_from_ledger`).

    Every execution enters (a re-execution that reproduces its batch once).

    Raises:
        InvalidArgument: the recorded rate changes (use :func:`sampling_from_ledger`,
            which tests each segment), or the sampler has no null.
    """
    result = sampling_from_ledger(ledger_or_path, alpha=alpha, seed=seed)
    if len(result.segments) != 1:
        raise InvalidArgument(
            f"the recorded sampling_rate changes between steps ({len(result.segments)} segments): "
            "use sampling_from_ledger, which tests each segment"
        )
    return result.segments[0].battery
