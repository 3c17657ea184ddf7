"""Segments: runs of executed steps that share (sampling rate, noise multiplier).

Privacy accounting needs only, for each executed step, the sampling rate q and
the noise multiplier σ (the clip norm C scales signal and noise alike, so it does
not change ε).  A run is therefore a sequence of segments ``(q, σ, steps)``; a
homogeneous run is one segment.

Every *executed* step counts: after a restart the ledger holds a
:class:`~dpverify.ledger.Resume` record and steps from the resume point on are
executed (and recorded) again.  Each execution released a fresh noisy gradient
computed on a batch, so each one composes, even when it re-draws the same batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from dpverify._validate import check_int, check_positive, check_probability

__all__ = ["Segment", "merge_segments", "segments_from_ledger", "segments_from_steps"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Segment:
    """``steps`` consecutive executed steps at sampling rate q and noise multiplier σ.

    Attributes:
        sampling_rate: q in (0, 1], the per-step inclusion probability.
        noise_multiplier: σ >= 0; the noise standard deviation is σ·C.  σ = 0
            is a legitimate record (a non-private step): it makes ε infinite.
        steps: number of executed steps, >= 1.

    Example:
        >>> Segment(sampling_rate=0.01, noise_multiplier=1.1, steps=1000).steps
        1000
    """

    sampling_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "sampling_rate", check_probability("sampling_rate", self.sampling_rate)
        )
        object.__setattr__(
            self,
            "noise_multiplier",
            check_positive("noise_multiplier", self.noise_multiplier, allow_zero=True),
        )
        object.__setattr__(self, "steps", check_int("steps", self.steps, minimum=1))

    @property
    def key(self) -> tuple[float, float]:
        """``(sampling_rate, noise_multiplier)``: segments with equal keys compose alike."""
        return (self.sampling_rate, self.noise_multiplier)


def merge_segments(segments: Iterable[Segment]) -> list[Segment]:
    """Merge *consecutive* segments with equal (q, σ); order is preserved."""
    out: list[Segment] = []
    for seg in segments:
        if not isinstance(seg, Segment):
            raise TypeError(f"expected Segment, got {type(seg).__name__}")
        if out and out[-1].key == seg.key:
            out[-1] = dataclasses.replace(out[-1], steps=out[-1].steps + seg.steps)
        else:
            out.append(seg)
    return out


def segments_from_steps(
    steps: Iterable[Any], *, sampling_rate: float, noise_multiplier: float
) -> list[Segment]:
    """Segments of a stream of :class:`~dpverify.ledger.Step` records.

    Args:
        steps: executed steps in order (repeats after resumes included).
        sampling_rate: the run header's q, used where a step records none.
        noise_multiplier: the run header's σ, used where a step records none.

    Returns:
        Consecutive steps with equal (q, σ) merged; empty if there are no steps.
        A segment is also cut where the step numbers do not follow on (a
        resume), so each segment is a run of consecutive step numbers (cyclic
        accounting relies on it).
    """
    out: list[Segment] = []
    cur_key: tuple[float, float] | None = None
    count = 0
    prev_number = None
    for step in steps:
        q = step.sampling_rate if step.sampling_rate is not None else sampling_rate
        sigma = step.noise_multiplier if step.noise_multiplier is not None else noise_multiplier
        key = (float(q), float(sigma))
        number = getattr(step, "step", None)
        follows = prev_number is None or number is None or number == prev_number + 1
        prev_number = number
        if key == cur_key and follows:
            count += 1
            continue
        if cur_key is not None:
            out.append(Segment(sampling_rate=cur_key[0], noise_multiplier=cur_key[1], steps=count))
        cur_key, count = key, 1
    if cur_key is not None:
        out.append(Segment(sampling_rate=cur_key[0], noise_multiplier=cur_key[1], steps=count))
    return out


def segments_from_ledger(ledger: Any) -> list[Segment]:
    """Segments of every executed step of a ledger.

    Args:
        ledger: a :class:`dpverify.ledger.Ledger` (anything with ``.header`` and
            ``.steps``), or a path to a ledger directory or a run directory.

    Returns:
        One segment per run of consecutive executed steps with equal (q, σ);
        per-step ``sampling_rate``/``noise_multiplier`` override the header's.
        Steps executed again after a resume are counted again.

    Raises:
        UnusableInput, LedgerCorrupt: when a path is given and cannot be read.
    """
    ledger = _as_ledger(ledger)
    header = ledger.header
    return segments_from_steps(
        ledger.steps,
        sampling_rate=header.sampling_rate,
        noise_multiplier=header.noise_multiplier,
    )


def _as_ledger(ledger: Any) -> Any:
    if hasattr(ledger, "header") and hasattr(ledger, "steps"):
        return ledger
    from dpverify.ledger import read_ledger, resolve_ledger_path

    return read_ledger(resolve_ledger_path(ledger))
