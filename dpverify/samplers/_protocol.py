"""The protocol every batch sampler follows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Sampler"]


@runtime_checkable
class Sampler(Protocol):
    """A batch sampler: which examples take part in logical step ``t``.

    Contract:
        * ``sample(t)`` returns sorted, distinct ``int64`` indices in
          ``[0, dataset_size)`` and is a pure function of the sampler's seed and
          ``t`` (step-addressable), so a resumed or replayed run draws exactly
          the same batches without drawing steps ``0..t-1``.
        * ``name`` and ``params()`` are what the ledger header records
          (``RunHeader.sampler`` / ``RunHeader.sampler_params``); ``params()``
          never contains the seed.
        * ``is_poisson`` is true only when the sampler implements independent
          Poisson subsampling at rate ``sampling_rate``, the assumption behind
          the Poisson-subsampled Gaussian ε.
        * ``accounting`` names the event the sampler really implements:
          ``"poisson"``, ``"truncated_poisson"``, ``"cyclic_poisson"``,
          ``"fixed_size_without_replacement"``,
          ``"shuffle"``, ``"balls_in_bins"`` or ``"unknown"``.
    """

    name: str
    dataset_size: int
    sampling_rate: float
    is_poisson: bool
    accounting: str

    def params(self) -> Mapping[str, Any]:
        """Public parameters for the ledger header (JSON-serialisable, no seed)."""
        ...

    def sample(self, step: int) -> np.ndarray:
        """Sorted distinct int64 indices sampled at logical step ``step``."""
        ...
