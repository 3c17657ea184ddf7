"""Gradient canaries in a training run (the trainer's side of issue 14).

The design (slots, directions, inclusion bits, key) is
:mod:`dpverify.empirical.canaries`; this module connects it to the loop:

* :func:`setup_canaries` creates the secret key for a new run (stored in
  ``private.json``, 0600) and returns the public commitment for the header;
* :class:`TrainingCanaries` splits each step's sampled indices into real
  examples (< N₀) and canary slots (≥ N₀) and builds the canaries' clipped
  sum as a parameter pytree, which the masked step adds to its clipped sum
  before the noise (``MaskedDPSGD.step(..., extra_sum=...)``).

A canary's clipped gradient is its direction u_i (norm exactly C), so it is
clipped, noised and divided by the public denominator exactly like a real
example's.  The pytree is built on the host from the canaries' sparse
coordinates (P floats per step); nothing here runs inside ``jit``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dpverify.empirical.canaries import (
    CanaryDesign,
    canary_key_digest,
    design_canaries,
    new_canary_key,
    param_leaves,
)
from dpverify.errors import UnusableInput

__all__ = ["TrainingCanaries", "load_canaries", "reference_canaries", "setup_canaries"]


def setup_canaries(count: int) -> tuple[dict, dict]:
    """``(private_entry, header_entry)`` for a new run with ``count`` canaries.

    ``private_entry`` goes into ``private.json["canaries"]`` (holds the key);
    ``header_entry`` into the header's ``extra`` (count and key digest only).
    """
    key = new_canary_key()
    return (
        {"count": int(count), "key": key.hex()},
        {"canaries": int(count), "canary_key_digest": canary_key_digest(key)},
    )


def design_from_private(entry: dict, *, num_params: int, clip_norm: float) -> CanaryDesign:
    """The :class:`CanaryDesign` of a run from its ``private.json["canaries"]``."""
    try:
        key = bytes.fromhex(str(entry["key"]))
        count = int(entry["count"])
    except (KeyError, TypeError, ValueError):
        raise UnusableInput("private.json: the canaries entry is damaged") from None
    return design_canaries(key, count=count, num_params=num_params, clip_norm=clip_norm)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class TrainingCanaries:
    """The canaries of a run, as the training loop uses them.

    Attributes:
        design: the secret :class:`CanaryDesign`.
        real_size: N₀, the number of real examples (slots start there).
        template: ``[(key_path, shape), ...]`` of the parameter tree.
    """

    design: CanaryDesign
    real_size: int
    template: tuple

    def split(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(real_indices, canary_slots)`` of a step's sorted sampled indices."""
        indices = np.asarray(indices)
        cut = int(np.searchsorted(indices, self.real_size))
        return indices[:cut], indices[cut:] - self.real_size

    def clipped_sum(self, slots: np.ndarray) -> dict:
        """Σ u_i over the sampled, included canaries, as a nested parameter dict."""
        flat = self.design.clipped_sum(slots).astype(np.float32)
        out: dict = {}
        offset = 0
        for path, shape in self.template:
            size = int(np.prod(shape, dtype=np.int64))
            node = out
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = flat[offset : offset + size].reshape(shape)
            offset += size
        return out


def load_canaries(private: dict, params: Any, *, real_size: int, clip_norm: float):
    """The run's :class:`TrainingCanaries`, or ``None`` for a run without canaries."""
    import jax

    entry = private.get("canaries")
    if not entry:
        return None
    host = jax.device_get(params)
    leaves = param_leaves(host)
    template = tuple((path, tuple(np.shape(a))) for path, a in leaves)
    num_params = int(sum(np.size(a) for _, a in leaves))
    design = design_from_private(entry, num_params=num_params, clip_norm=clip_norm)
    return TrainingCanaries(design=design, real_size=int(real_size), template=template)


def reference_canaries(
    private: dict, params: Any, *, dataset_size: int, count: int, clip_norm: float
):
    """For replay: ``split(indices) -> (real_indices, extra_sum)`` in float64.

    Built apart from :class:`TrainingCanaries` (its own unflattening, by
    ``jax.tree_util`` leaf order, which is sorted key-path order for the
    dicts Flax uses), so that replay does not re-use the trainer's canary
    code: only the design (which canaries, which directions) is shared,
    as the ledger's indices are.
    """
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(params))
    sizes = [int(np.size(a)) for a in leaves]
    design = design_from_private(
        dict(private.get("canaries") or {}), num_params=sum(sizes), clip_norm=clip_norm
    )
    if design.count != count:
        raise UnusableInput(f"private.json holds {design.count} canaries; the run declares {count}")
    real_size = int(dataset_size) - int(count)
    bounds = np.cumsum([0, *sizes])

    def split(indices: Any) -> tuple[np.ndarray, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        real, slots = idx[idx < real_size], idx[idx >= real_size] - real_size
        flat = design.clipped_sum(slots)
        parts = [flat[bounds[k] : bounds[k + 1]].reshape(np.shape(a)) for k, a in enumerate(leaves)]
        return real, jax.tree_util.tree_unflatten(treedef, parts)

    return split
