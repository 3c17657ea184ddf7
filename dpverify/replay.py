"""The replay seam: checkpoint segments, and what a framework's segment replayer returns.

Replay verifies what a run *released*.  A **segment** is the stretch of a
ledger between two consecutive checkpoints of one execution: it starts from
checkpoint k (or from the checkpoint a :class:`~dpverify.ledger.Resume`
restored) and holds every :class:`~dpverify.ledger.Step` executed until the
next :class:`~dpverify.ledger.Checkpoint` k′, which must be the steps k, k+1,
…, k′−1 in order.  Replaying it means: restore checkpoint k, run an
independent reference of the DP-SGD step for every step from the ledger's
indices and the run's noise key, and compare the parameters (and optimiser
state) reached with checkpoint k′.

Who does what:

* :func:`checkpoint_segments` (here, framework-free) cuts a ledger into
  segments; steps executed after the last checkpoint of an execution (a run
  killed before its next checkpoint) belong to no segment.
* ``audits.replay`` chooses WHICH segments are replayed (a budget in steps,
  the auditor's own random seed, always the final segment and every segment
  touching a resume) and reports coverage.
* A **segment replayer**, chosen by the ledger header's
  ``extra["framework"]`` (``"jax"`` when absent, the dpverify JAX trainers),
  does the per-framework work.  It is a function

      replay_segments(run_dir: Path, ledger: Ledger, segments: Sequence[Segment],
                      *, noise_key_path: Path | None = None) -> SegmentReplay

  imported lazily from the module registered for its framework in
  ``audits.replay.REPLAYERS`` (JAX: ``trainers.replay``; Opacus:
  ``dpverify.integrations.opacus.replay``).  A :class:`Segment` also unpacks
  as ``(start, end)``, for replayers that only need the checkpoint steps.
  The replayer returns one outcome per segment, in order — any object with
  the attributes of :class:`SegmentOutcome` (``start``, ``end``, ``ok``,
  ``rel_deviation``, ``max_abs_deviation``, ``tolerance``; ``reason`` and
  ``diagnosis`` optional) — or ``skipped_reason`` when it cannot run at all
  (missing key, data, model, an unreproducible PRNG setting, …).  A skipped
  replay is reported as not verified, never as a refutation.

This module does not import JAX or torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "Segment",
    "SegmentOutcome",
    "SegmentReplay",
    "checkpoint_segments",
    "covered_steps",
]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Segment:
    """The steps of one execution between two consecutive checkpoints.

    Attributes:
        start: checkpoint step k restored (the parameters after k steps).
        end: checkpoint step k′ compared with (k′ > k).
        start_digest: SHA-256 of checkpoint k's file, as the ledger records it.
        start_path: its path relative to the run directory (``None``: default layout).
        end_digest, end_path: likewise for checkpoint k′.
        steps: the :class:`~dpverify.ledger.Step` records k … k′−1, in order.
        after_resume: the segment starts at a checkpoint a resume restored.
        before_resume: a resume later restored the segment's end checkpoint.
        final: the segment ends at the run's final parameters (the last
            checkpoint of the ledger, after its last step).
    """

    start: int
    end: int
    start_digest: str
    start_path: str | None
    end_digest: str
    end_path: str | None
    steps: tuple[Any, ...]
    after_resume: bool = False
    before_resume: bool = False
    final: bool = False

    @property
    def num_steps(self) -> int:
        """k′ − k, the steps replayed."""
        return self.end - self.start

    @property
    def touches_resume(self) -> bool:
        """The segment starts or ends at a checkpoint a resume restored."""
        return self.after_resume or self.before_resume

    def __iter__(self) -> Iterator[int]:
        """Unpacks as ``(start, end)``."""
        return iter((self.start, self.end))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentOutcome:
    """Replay of one segment.

    Attributes:
        start, end: the segment's checkpoint steps.
        ok: the reference reached the released parameters and optimiser
            state within ``tolerance``.
        rel_deviation: the largest relative deviation (parameters:
            ‖θ_ref − θ_rec‖ / ‖θ_rec(end) − θ_rec(start)‖; optimiser state:
            ‖s_ref − s_rec‖ / ‖s_rec‖).
        max_abs_deviation: largest |reference − released| component.
        tolerance: the relative tolerance of the run's precision.
        reason: one line naming the segment and the deviation.
        diagnosis: the likely bug, in plain words, when the replayer can tell.
    """

    start: int
    end: int
    ok: bool
    rel_deviation: float
    max_abs_deviation: float
    tolerance: float
    reason: str = ""
    diagnosis: str | None = None

    @property
    def steps(self) -> int:
        """Steps replayed."""
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (non-finite numbers become ``None``)."""
        out = dataclasses.asdict(self)
        for k in ("rel_deviation", "max_abs_deviation"):
            if not math.isfinite(out[k]):
                out[k] = None
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentReplay:
    """Outcomes of the replayed segments, or why replay could not run."""

    outcomes: tuple[Any, ...] = ()
    skipped_reason: str | None = None


def checkpoint_segments(ledger: Any) -> tuple[tuple[Segment, ...], list[str]]:
    """Cut a ledger into checkpoint segments.

    Args:
        ledger: a read :class:`dpverify.ledger.Ledger` (its ``records`` in order).

    Returns:
        ``(segments, notes)``: every complete segment in ledger order, and
        plain-words notes on executed steps no segment holds (steps after the
        last checkpoint of an interrupted execution, a resume from a
        checkpoint the ledger does not record, steps out of order).
    """
    from dpverify.ledger.records import Checkpoint, Resume, Step

    segments: list[dict[str, Any]] = []
    notes: list[str] = []
    start: Any = None  # Checkpoint record the current stretch starts from
    after_resume = False
    pending: list[Any] = []
    latest: dict[int, Any] = {}  # step -> latest Checkpoint record
    orphan_steps = 0

    for rec in ledger.records:
        if isinstance(rec, Step):
            pending.append(rec)
        elif isinstance(rec, Checkpoint):
            if start is not None and pending:
                expected = list(range(start.step, rec.step))
                if [s.step for s in pending] == expected:
                    segments.append(
                        {"start": start, "end": rec, "steps": tuple(pending), "after": after_resume}
                    )
                else:
                    orphan_steps += len(pending)
                    notes.append(
                        f"steps between checkpoints {start.step} and {rec.step} are not "
                        f"{start.step}…{rec.step - 1} in order"
                    )
            elif pending:
                orphan_steps += len(pending)
            latest[rec.step] = rec
            start, pending, after_resume = rec, [], False
        elif isinstance(rec, Resume):
            orphan_steps += len(pending)
            restored = latest.get(rec.step)
            digest = getattr(rec, "checkpoint_digest", None)
            if restored is not None and digest and restored.digest != digest:
                restored = None
            if restored is None:
                notes.append(f"the resume at step {rec.step} restored no recorded checkpoint")
            else:
                for seg in segments:
                    if seg["end"] is restored:
                        seg["before"] = True
            start, pending, after_resume = restored, [], restored is not None
    trailing = len(pending)
    orphan_steps += trailing
    if orphan_steps:
        notes.append(
            f"{orphan_steps} executed step(s) lie in no checkpoint segment (an execution "
            "stopped before its next checkpoint)"
        )
    last_ckpt = None
    for rec in ledger.records:
        if isinstance(rec, Checkpoint):
            last_ckpt = rec
    if trailing:  # the final parameters were never checkpointed
        last_ckpt = None
    out = []
    for seg in segments:
        out.append(
            Segment(
                start=seg["start"].step,
                end=seg["end"].step,
                start_digest=seg["start"].digest,
                start_path=seg["start"].path,
                end_digest=seg["end"].digest,
                end_path=seg["end"].path,
                steps=seg["steps"],
                after_resume=seg["after"],
                before_resume=bool(seg.get("before")),
                final=seg["end"] is last_ckpt,
            )
        )
    return tuple(out), notes


def covered_steps(segments: Sequence[Segment]) -> int:
    """Executed steps the segments hold."""
    return sum(len(s.steps) for s in segments)
