"""A transparent wrapper around a data loader's batch sampler that remembers its batches.

The wrapped sampler yields exactly what the original yields (Opacus's
``UniformWithReplacementSampler`` yields index lists, empty ones included);
the tap also queues a copy of each batch's indices.  The DataLoader hands
batches to the loop in the order the sampler produced them (also with worker
processes, which prefetch ahead), so the oldest queued batch is the one the
next optimiser step trains on: the recorder pops it there.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["IndexTap", "install_tap", "remove_tap"]


class IndexTap:
    """Iterates the original batch sampler and queues every batch's indices."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.queue: collections.deque[np.ndarray] = collections.deque()
        self.yielded = 0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.inner:
            self.queue.append(np.asarray(list(batch), dtype=np.int64))
            self.yielded += 1
            yield batch

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:  # sample_rate, batch_size, ... of the original
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def install_tap(data_loader: Any) -> IndexTap:
    """Put an :class:`IndexTap` in place of ``data_loader.batch_sampler``.

    DataLoader forbids re-assigning ``batch_sampler`` after construction (it
    guards the attribute, not the behaviour); the tap iterates the same
    sampler, so going around the guard changes nothing the loader computes.
    """
    tap = IndexTap(data_loader.batch_sampler)
    object.__setattr__(data_loader, "batch_sampler", tap)
    return tap


def remove_tap(data_loader: Any, tap: IndexTap) -> None:
    if data_loader.batch_sampler is tap:
        object.__setattr__(data_loader, "batch_sampler", tap.inner)
