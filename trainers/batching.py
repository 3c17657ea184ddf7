"""Split a logical batch into fixed-size physical batches with a 0/1 mask.

A Poisson logical batch has a random size L.  The masked trainer processes it
as ⌈L/p⌉ physical batches of exactly ``p`` rows so that the compiled function
only ever sees shape ``(p, …)``.  The last physical batch is padded with a
*valid* index (so gathering it is safe) and mask ``False``; the trainer's
masked sum makes padding contribute exactly zero (docs/masked-dpsgd.md, "The step").
L = 0 gives zero physical batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpverify._validate import check_int
from dpverify.errors import InvalidArgument

__all__ = ["PhysicalBatches", "num_physical_batches", "split_physical_batches"]


def num_physical_batches(batch_size: int, physical_batch_size: int) -> int:
    """⌈L/p⌉, the number of physical batches for a logical batch of size L."""
    L = check_int("batch_size", batch_size, minimum=0)
    p = check_int("physical_batch_size", physical_batch_size, minimum=1)
    return -(-L // p)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class PhysicalBatches:
    """A logical batch cut into fixed-size physical batches.

    Attributes:
        indices: int32 array ``(k, p)``; row j holds the data set indices of
            physical batch j, padding included.
        mask: bool array ``(k, p)``; ``True`` for real examples, ``False``
            for padding.  ``indices[mask]`` is the logical batch, in order.
        batch_size: L, the number of real examples.
    """

    indices: np.ndarray
    mask: np.ndarray
    batch_size: int

    @property
    def count(self) -> int:
        """k = ⌈L/p⌉, the number of physical batches."""
        return int(self.indices.shape[0])

    @property
    def physical_batch_size(self) -> int:
        """p, the fixed number of rows per physical batch."""
        return int(self.indices.shape[1])

    def __iter__(self):
        """Yields ``(indices_j, mask_j)`` for each physical batch j."""
        return iter(zip(self.indices, self.mask, strict=True))

    def __repr__(self) -> str:  # never print indices by default
        return (
            f"PhysicalBatches(batch_size={self.batch_size}, count={self.count}, "
            f"physical_batch_size={self.physical_batch_size})"
        )


def split_physical_batches(
    indices: np.ndarray, physical_batch_size: int, *, pad_index: int | None = None
) -> PhysicalBatches:
    """Cut the L sampled ``indices`` into ⌈L/p⌉ physical batches of size p.

    Args:
        indices: 1-D integer array of data set indices (the logical batch).
        physical_batch_size: p ≥ 1.
        pad_index: data set index used for padding rows; defaults to the first
            index of the logical batch (always valid).  Padding rows are
            masked out, so their content never matters.

    Returns:
        :class:`PhysicalBatches` with int32 ``indices`` and bool ``mask`` of
        shape ``(⌈L/p⌉, p)``; shape ``(0, p)`` when L = 0.

    Raises:
        InvalidArgument: ``indices`` is not 1-D integer or non-negative, or
            ``p`` < 1, or ``pad_index`` is negative.
    """
    p = check_int("physical_batch_size", physical_batch_size, minimum=1)
    idx = np.asarray(indices)
    if idx.size == 0:
        idx = np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise InvalidArgument(
            f"indices must be a 1-D integer array, got shape {idx.shape} {idx.dtype}"
        )
    if idx.size and (idx.min() < 0 or idx.max() > np.iinfo(np.int32).max):
        raise InvalidArgument("indices must be in [0, 2**31)")
    L = int(idx.size)
    k = -(-L // p)
    if pad_index is None:
        pad_index = int(idx[0]) if L else 0
    pad_index = check_int("pad_index", pad_index, minimum=0)
    out = np.full(k * p, pad_index, dtype=np.int32)
    out[:L] = idx
    mask = np.zeros(k * p, dtype=bool)
    mask[:L] = True
    return PhysicalBatches(indices=out.reshape(k, p), mask=mask.reshape(k, p), batch_size=L)
