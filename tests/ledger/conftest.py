"""Shared helpers for the ledger tests: a small real ledger and its frame offsets."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from dpverify.ledger import Checkpoint, LedgerWriter, RunHeader, Seal, Step


def make_header(**overrides) -> RunHeader:
    fields = dict(
        dataset_size=100,
        sampler="poisson",
        sampling_rate=0.05,
        noise_multiplier=1.1,
        clip_norm=1.0,
        delta=1e-5,
        claimed_epsilon=3.0,
        sampler_params={"note": "test"},
        software={"dpverify": "0.1.0"},
    )
    fields.update(overrides)
    return RunHeader(**fields)


def make_step(t: int, rng: np.random.Generator, n: int = 100, q: float = 0.05, **kw) -> Step:
    indices = np.flatnonzero(rng.random(n) < q)
    kw.setdefault("noise_std", 1.1)
    kw.setdefault("num_clipped", int(indices.size // 2))
    kw.setdefault("max_grad_norm", 2.5)
    return Step(step=t, indices=indices, **kw)


def small_ledger(path: Path, *, steps: int = 6, seed: int = 0) -> Path:
    """Header, steps 0..3, checkpoint, resume at 2, steps 2..steps-1, seal."""
    rng = np.random.default_rng(seed)
    with LedgerWriter.create(path, make_header(), group_commit=3) as w:
        for t in range(4):
            w.append(make_step(t, rng))
        w.append(Checkpoint(step=4, digest="ab" * 32, path="checkpoints/4.npz"))
    with LedgerWriter.resume(path, step=2, checkpoint_digest="cd" * 32) as w:
        for t in range(2, steps):
            w.append(make_step(t, rng, update_sketch=(0.5, -1.0)))
        w.close(seal=Seal(steps_executed=w.steps_executed, final_step=steps))
    return path


def frames(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each frame of a records file (docs/ledger-format.md §3)."""
    out, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        end = pos + 9 + length + 36
        out.append((pos, end))
        pos = end
    return out


@pytest.fixture
def helpers() -> types.SimpleNamespace:
    """The helpers above (test modules cannot import conftest by name)."""
    return types.SimpleNamespace(
        make_header=make_header, make_step=make_step, small_ledger=small_ledger, frames=frames
    )
