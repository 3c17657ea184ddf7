"""Shared helpers for the auditor's tests: hand-made ledgers without the disk format."""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import numpy as np
import pytest

from dpverify.ledger.records import Checkpoint, Resume, RunHeader, Seal, Step


@dataclasses.dataclass
class FakeLedger:
    """Quacks like ``dpverify.ledger.Ledger`` (records in ledger order, header first)."""

    header: RunHeader
    records: tuple
    head: str = "ab" * 32
    torn_tail_bytes: int = 0

    @property
    def steps(self) -> tuple:
        return tuple(r for r in self.records if isinstance(r, Step))

    @property
    def resumes(self) -> tuple:
        return tuple(r for r in self.records if isinstance(r, Resume))

    @property
    def checkpoints(self) -> tuple:
        return tuple(r for r in self.records if isinstance(r, Checkpoint))

    @property
    def seal(self) -> Seal | None:
        last = self.records[-1]
        return last if isinstance(last, Seal) else None


@dataclasses.dataclass
class FakeVerify:
    """Quacks like ``dpverify.ledger.VerifyReport``."""

    ok: bool = True
    records: int = 0
    steps: int = 0
    head: str = "ab" * 32
    sealed: bool = True
    torn_tail_bytes: int = 0
    first_bad_record: int | None = None
    reason: str | None = None


def make_header(**overrides: Any) -> RunHeader:
    fields = dict(
        dataset_size=1000,
        sampler="poisson",
        sampling_rate=0.02,
        noise_multiplier=1.1,
        clip_norm=1.0,
        delta=1e-5,
        claimed_epsilon=3.0,
        physical_batch_size=16,
        precision="float32",
        task="digits-mlp",
        extra={"secret_note": "must not be published"},
    )
    fields.update(overrides)
    return RunHeader(**fields)


def honest_step(header: RunHeader, t: int, rng: np.random.Generator, **overrides: Any) -> Step:
    """A step record a correct masked trainer would write."""
    n, q = header.dataset_size, header.sampling_rate
    size = int(rng.binomial(n, q))
    idx = np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
    fields = dict(
        step=t,
        indices=idx,
        noise_std=header.noise_multiplier * header.clip_norm,
        noise_draws=1,
        num_clipped=size // 2,
        max_grad_norm=3.0,
        max_clipped_norm=header.clip_norm * (1 - 1e-7),
        denominator=header.denominator,
        physical_batches=-(-size // header.physical_batch_size),
    )
    fields.update(overrides)
    return Step(**fields)


def make_ledger(
    steps: int = 20,
    *,
    header: RunHeader | None = None,
    seed: int = 0,
    sealed: bool = True,
    step_overrides: dict[str, Any] | None = None,
) -> FakeLedger:
    header = header or make_header()
    rng = np.random.default_rng(seed)
    records: list[Any] = [header]
    records += [honest_step(header, t, rng, **(step_overrides or {})) for t in range(steps)]
    if sealed:
        records.append(Seal(steps_executed=steps, final_step=steps))
    return FakeLedger(header=header, records=tuple(records))


def verify_for(ledger: FakeLedger, **overrides: Any) -> FakeVerify:
    fields = dict(
        records=len(ledger.records),
        steps=len(ledger.steps),
        head=ledger.head,
        sealed=ledger.seal is not None,
        torn_tail_bytes=ledger.torn_tail_bytes,
    )
    fields.update(overrides)
    return FakeVerify(**fields)


def write_ledger(path: Any, ledger: FakeLedger) -> Any:
    """Write ``ledger``'s records to a real on-disk ledger at ``path``; returns the path."""
    from dpverify.ledger import LedgerWriter

    records = list(ledger.records)
    writer = LedgerWriter.create(path, records[0], group_commit=256)
    for record in records[1:]:
        if isinstance(record, Resume):
            writer.close()
            writer = LedgerWriter.resume(
                path, step=record.step, checkpoint_digest=record.checkpoint_digest
            )
        elif isinstance(record, Seal):
            writer.close(seal=record)
            return path
        else:
            writer.append(record)
    writer.close()
    return path


def frames(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each frame of a ledger records file (format §3)."""
    out, pos = [], 8  # after MAGIC
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        end = pos + 9 + length + 36
        out.append((pos, end))
        pos = end
    return out


@pytest.fixture
def fakes() -> types.SimpleNamespace:
    """The helpers above, as a fixture (test modules cannot import conftest by name)."""
    return types.SimpleNamespace(
        FakeLedger=FakeLedger,
        FakeVerify=FakeVerify,
        make_header=make_header,
        honest_step=honest_step,
        make_ledger=make_ledger,
        verify_for=verify_for,
        write_ledger=write_ledger,
        frames=frames,
    )
