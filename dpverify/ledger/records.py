"""Ledger record types: what a DP-SGD run did, one frozen record per event.

A ledger is a sequence of records: exactly one :class:`RunHeader` first, then
:class:`Step`, :class:`Checkpoint` and :class:`Resume` records in the order they
happened, and optionally one :class:`Seal` last.

Compatibility rule (after dp-accounting's ``dp_event.py``): record types and
fields are never removed and their meanings never change.  New fields are
added as optional (defaulting to ``None``), and ``RECORD_VERSION`` is bumped
when they are.  A reader meeting a record type it does not know raises an
error; it never skips it silently.

Units: norms are L2 norms in the parameters' units; ``noise_std`` is the
standard deviation of the Gaussian added to the *sum* of clipped per-example
gradients (σ·C for a correct run), before division by ``denominator``.

Secrecy: a :class:`Step` holds the sampled indices, which reveal who was in
which batch.  Never print them by default; never put the noise key in any
record (the header holds only a digest of the key, ``noise_key_digest``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from dpverify.errors import InvalidArgument

__all__ = [
    "NEIGHBOURING_RELATIONS",
    "RECORD_TYPES",
    "RECORD_VERSION",
    "Checkpoint",
    "Record",
    "Resume",
    "RunHeader",
    "Seal",
    "Step",
]

#: Version of the record schema; bumped when optional fields are added.
RECORD_VERSION = 1

#: Neighbouring relations a run may declare.
NEIGHBOURING_RELATIONS = ("add_remove", "replace_one")


def _optional_float(name: str, value: Any, *, minimum: float | None = 0.0) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name}={value!r} must be a number") from None
    if math.isnan(out) or (minimum is not None and out < minimum):
        raise InvalidArgument(f"{name}={value!r} must be >= {minimum}")
    return out


def _optional_int(name: str, value: Any, *, minimum: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise InvalidArgument(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _require_int(name: str, value: Any, *, minimum: int) -> int:
    out = _optional_int(name, value, minimum=minimum)
    if out is None:
        raise InvalidArgument(f"{name}=None must be an integer >= {minimum}")
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunHeader:
    """The public configuration of a run: the claim the auditor checks.

    Attributes:
        dataset_size: N, the number of examples that may be sampled.
        sampler: name of the sampler *as declared* (``"poisson"`` for a
            Poisson-compliant run; see :mod:`dpverify.samplers`).
        sampler_params: the sampler's parameters, JSON-serialisable (e.g.
            ``{"cap": 300}`` for truncated Poisson).  Never the seed.
        sampling_rate: q, the per-step inclusion probability the accountant uses.
        noise_multiplier: σ; noise standard deviation is σ·C.
        clip_norm: C, the per-example L2 clipping bound.
        delta: δ of the claimed (ε, δ).
        claimed_epsilon: ε the run claims at ``delta``; ``None`` if no claim.
        neighbouring: ``"add_remove"`` (default) or ``"replace_one"``.
        accountant: the accountant the claim was computed with (informative).
        expected_batch_size: denominator of the noisy mean; q·N when ``None``.
        physical_batch_size: fixed physical batch size p of the masked trainer.
        precision: ``"float32"``, ``"tf32"`` or ``"bf16"`` (trainer compute).
        task: free-form task name (e.g. ``"digits-mlp"``).
        software: package name → version string.
        dataset_fingerprint: hex digest identifying the training data.
        noise_key_digest: SHA-256 hex digest of the noise key file (the key
            itself stays in a private key file, given to auditors only for replay).
        run_id: unique identifier of the run.
        created: ISO 8601 UTC creation time.
        extra: further JSON-serialisable fields (documented in docs/ledger-format.md).
    """

    TYPE: ClassVar[str] = "run"

    dataset_size: int
    sampler: str
    sampling_rate: float
    noise_multiplier: float
    clip_norm: float
    delta: float
    claimed_epsilon: float | None = None
    neighbouring: str = "add_remove"
    sampler_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    accountant: str | None = None
    expected_batch_size: float | None = None
    physical_batch_size: int | None = None
    precision: str | None = None
    task: str | None = None
    software: Mapping[str, str] = dataclasses.field(default_factory=dict)
    dataset_fingerprint: str | None = None
    noise_key_digest: str | None = None
    run_id: str | None = None
    created: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_int("dataset_size", self.dataset_size, minimum=1)
        if not isinstance(self.sampler, str) or not self.sampler:
            raise InvalidArgument(f"sampler={self.sampler!r} must be a non-empty string")
        q = _optional_float("sampling_rate", self.sampling_rate)
        if q is None or not 0.0 < q <= 1.0:
            raise InvalidArgument(f"sampling_rate={self.sampling_rate!r} must be in (0, 1]")
        if _optional_float("noise_multiplier", self.noise_multiplier) is None:
            raise InvalidArgument("noise_multiplier=None must be >= 0")
        c = _optional_float("clip_norm", self.clip_norm)
        if c is None or c <= 0 or math.isinf(c):
            raise InvalidArgument(f"clip_norm={self.clip_norm!r} must be > 0")
        d = _optional_float("delta", self.delta)
        if d is None or not 0.0 < d < 1.0:
            raise InvalidArgument(f"delta={self.delta!r} must be in (0, 1)")
        _optional_float("claimed_epsilon", self.claimed_epsilon)
        if self.neighbouring not in NEIGHBOURING_RELATIONS:
            raise InvalidArgument(
                f"neighbouring={self.neighbouring!r} must be one of {', '.join(NEIGHBOURING_RELATIONS)}"
            )
        _optional_float("expected_batch_size", self.expected_batch_size)
        _optional_int("physical_batch_size", self.physical_batch_size, minimum=1)

    @property
    def denominator(self) -> float:
        """Expected batch size q·N unless declared otherwise."""
        if self.expected_batch_size is not None:
            return float(self.expected_batch_size)
        return self.sampling_rate * self.dataset_size


def _same_float(a: Any, b: Any) -> bool:
    """Equal, or both NaN (a ledger may legitimately record NaN norms)."""
    return a == b or (
        isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    )


class CheckedIndices(np.ndarray):
    """Marks an int64 array already known sorted, distinct and non-negative.

    Internal: the ledger reader wraps the index codec's output in it so that
    :class:`Step` does not re-check (or copy) what the codec guarantees.  The
    Step stores a plain read-only ``ndarray``.
    """


def _as_indices(value: Any) -> np.ndarray:
    if type(value) is CheckedIndices and value.dtype == np.int64 and value.ndim == 1:
        arr = value.view(np.ndarray)
        arr.setflags(write=False)
        return arr
    arr = np.asarray(value)
    if arr.size == 0:
        arr = np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidArgument(
            f"indices must be a 1-D integer array, got shape {arr.shape} {arr.dtype}"
        )
    arr = arr.astype(np.int64, copy=True)
    if arr.size:
        if arr[0] < 0:
            raise InvalidArgument(f"indices must be >= 0, got {int(arr[0])}")
        if np.any(arr[1:] <= arr[:-1]):
            raise InvalidArgument("indices must be strictly increasing (sorted, no repeats)")
    arr.setflags(write=False)
    return arr


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Step:
    """One executed logical step of DP-SGD.

    Per-step values that are ``None`` default to the run header's (for
    ``clip_norm``, ``noise_multiplier``, ``sampling_rate``) or are unknown.

    Attributes:
        step: logical step index t (0-based).  After a :class:`Resume` record
            the numbering restarts at the resume point, so a step index can
            appear more than once: every occurrence was executed and counts.
        indices: sorted, distinct int64 indices of the examples sampled at t.
        sampling_rate: q used at this step if it differs from the header's.
        clip_norm: C used at this step.
        noise_multiplier: σ used at this step.
        noise_std: standard deviation of the noise actually added to the sum
            of clipped gradients (σ·C when correct).
        noise_draws: how many times noise was drawn and added in this logical
            step (1 when correct; the number of physical batches for the
            "noise per micro-batch" shortcut).
        num_clipped: examples whose gradient norm exceeded C.
        max_grad_norm: largest per-example gradient norm before clipping.
        max_clipped_norm: largest per-example gradient norm after clipping
            (≤ C when correct).
        denominator: the divisor of the noisy sum (expected batch size q·N).
        physical_batches: number of fixed-size physical batches executed.
        update_sketch: a few random projections of the noisy averaged
            gradient, for diagnosis only (replay compares released
            parameters, never this self-reported digest alone).
        num_nonfinite: real examples whose loss or gradient was not finite;
            each contributed exactly zero to the sum (clip factor 0).
    """

    TYPE: ClassVar[str] = "step"

    step: int
    indices: np.ndarray
    sampling_rate: float | None = None
    clip_norm: float | None = None
    noise_multiplier: float | None = None
    noise_std: float | None = None
    noise_draws: int | None = None
    num_clipped: int | None = None
    max_grad_norm: float | None = None
    max_clipped_norm: float | None = None
    denominator: float | None = None
    physical_batches: int | None = None
    update_sketch: tuple[float, ...] | None = None
    num_nonfinite: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "step", _require_int("step", self.step, minimum=0))
        object.__setattr__(self, "indices", _as_indices(self.indices))
        for name in ("sampling_rate", "clip_norm", "noise_multiplier", "noise_std", "denominator"):
            object.__setattr__(self, name, _optional_float(name, getattr(self, name)))
        for name in ("max_grad_norm", "max_clipped_norm"):
            # NaN/inf norms are legitimate observations of a broken run: keep them.
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else float(value))
        for name in ("noise_draws", "num_clipped", "physical_batches", "num_nonfinite"):
            object.__setattr__(self, name, _optional_int(name, getattr(self, name)))
        if self.sampling_rate is not None and not 0.0 < self.sampling_rate <= 1.0:
            raise InvalidArgument(f"sampling_rate={self.sampling_rate!r} must be in (0, 1]")
        if self.update_sketch is not None:
            object.__setattr__(self, "update_sketch", tuple(float(x) for x in self.update_sketch))

    @property
    def batch_size(self) -> int:
        """Realised logical batch size L = len(indices)."""
        return int(self.indices.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Step):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "indices":
                if not np.array_equal(a, b):
                    return False
            elif f.name == "update_sketch" and a is not None and b is not None:
                if len(a) != len(b) or not all(map(_same_float, a, b)):
                    return False
            elif a != b and not (isinstance(a, float) and _same_float(a, b)):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:  # never print indices by default
        return f"Step(step={self.step}, batch_size={self.batch_size}, ...)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """Model state after ``step`` logical steps was saved to ``path``.

    The write-ahead rule: every :class:`Step` with index < ``step`` is durable
    in the ledger before this record (and the checkpoint file) is written.

    Attributes:
        step: number of logical steps completed (the next step to run).
        digest: SHA-256 hex digest of the checkpoint file; for a checkpoint
            directory (the Orbax checkpoints of multi-process runs), the
            SHA-256 over its files' relative paths, sizes and SHA-256s
            (``trainers.checkpoint_orbax.tree_digest``).
        path: location of the file (or directory), relative to the run directory.
    """

    TYPE: ClassVar[str] = "checkpoint"

    step: int
    digest: str
    path: str | None = None

    def __post_init__(self) -> None:
        _require_int("step", self.step, minimum=0)
        if not isinstance(self.digest, str) or not self.digest:
            raise InvalidArgument(f"digest={self.digest!r} must be a non-empty hex string")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resume:
    """The run restarted; the next :class:`Step` record has index ``step``.

    ``step`` is at most one past the last step recorded before it.  Steps in
    ``[step, last]`` were executed twice and both executions count for privacy.

    Attributes:
        step: first logical step executed after the restart.
        checkpoint_digest: digest of the checkpoint restored, if any.
    """

    TYPE: ClassVar[str] = "resume"

    step: int
    checkpoint_digest: str | None = None

    def __post_init__(self) -> None:
        _require_int("step", self.step, minimum=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seal:
    """The run finished cleanly; nothing may be appended after this record.

    Attributes:
        steps_executed: number of :class:`Step` records in the ledger
            (repeats after resumes included).
        final_step: index of the last logical step, plus one.
        claimed_epsilon: the run's final claim at ``delta`` (may update the
            header's claim, e.g. when steps were repeated after a resume).
        delta: δ of the final claim.
    """

    TYPE: ClassVar[str] = "seal"

    steps_executed: int
    final_step: int
    claimed_epsilon: float | None = None
    delta: float | None = None

    def __post_init__(self) -> None:
        _require_int("steps_executed", self.steps_executed, minimum=0)
        _require_int("final_step", self.final_step, minimum=0)
        _optional_float("claimed_epsilon", self.claimed_epsilon)


Record = RunHeader | Step | Checkpoint | Resume | Seal

#: Record type name → class.  Unknown names are an error.
RECORD_TYPES: dict[str, type] = {
    cls.TYPE: cls for cls in (RunHeader, Step, Checkpoint, Resume, Seal)
}
