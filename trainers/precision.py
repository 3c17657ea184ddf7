"""Compute precision of the masked DP-SGD step: float32 "highest", TF32, bf16.

Three settings, recorded in the ledger header (``RunHeader.precision``):

* ``"float32"`` — parameters, activations and gradients in float32 and every
  matmul/convolution at ``jax.lax.Precision.HIGHEST`` (no TF32 shortcut on
  GPUs).  Replay tolerance ~1e-5 of the sketch scale.
* ``"tf32"`` — float32 storage, matmuls/convolutions allowed to use TF32 tensor
  cores (10-bit mantissa inputs).  On CPUs this is the same as ``"float32"``.
* ``"bf16"`` — the forward and backward passes run in bfloat16 (parameters and
  floating inputs cast to bf16, 8-bit mantissa); per-example gradients are cast
  back to float32 before norms, clipping, summation, noise and the optimiser,
  and the master parameters stay float32.

The noise is always drawn in float32 whatever the precision, so that the
reference trainer can reproduce it bit for bit.
"""

from __future__ import annotations

import contextlib
from typing import Any

from dpverify._validate import check_choice

__all__ = [
    "PRECISIONS",
    "check_precision",
    "compute_dtype",
    "matmul_precision",
    "precision_context",
    "replay_tolerance",
    "sketch_tolerance",
]

#: Precision names accepted by ``DPSGDConfig.precision`` and ``--precision``.
PRECISIONS: tuple[str, ...] = ("float32", "tf32", "bf16")

# Relative replay tolerance (of the sketch scale) per precision; see
# docs/masked-dpsgd.md for how they were measured.
_SKETCH_TOLERANCE = {"float32": 1e-5, "tf32": 1e-2, "bf16": 5e-2}

# Relative tolerance of a replayed checkpoint segment (released parameters and
# optimiser state against the float64 reference; see trainers/replay.py and
# docs/certificate.md for the measured honest deviations).
_REPLAY_TOLERANCE = {"float32": 1e-4, "tf32": 5e-2, "bf16": 1e-1}

_MATMUL_PRECISION = {"float32": "highest", "tf32": "tensorfloat32", "bf16": "default"}


def check_precision(precision: Any) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else :class:`InvalidArgument`."""
    return check_choice("precision", precision, PRECISIONS)


def matmul_precision(precision: str) -> str:
    """The ``jax.default_matmul_precision`` value used for ``precision``."""
    return _MATMUL_PRECISION[check_precision(precision)]


def compute_dtype(precision: str) -> Any:
    """dtype of the forward/backward pass: bfloat16 for ``"bf16"``, else float32."""
    import jax.numpy as jnp

    return jnp.bfloat16 if check_precision(precision) == "bf16" else jnp.float32


def precision_context(precision: str) -> contextlib.AbstractContextManager:
    """Context manager setting JAX's default matmul precision for ``precision``.

    Wrap calls of jitted functions in it: the setting is part of JAX's trace
    context, so it is fixed when the function is first compiled.
    """
    import jax

    return jax.default_matmul_precision(matmul_precision(precision))


def sketch_tolerance(precision: str) -> float:
    """Relative tolerance for comparing update sketches computed at ``precision``.

    The deviation between a recorded sketch and the float64 reference sketch,
    divided by the root-mean-square of the reference sketch (≈ the L2 norm of
    the noisy averaged gradient), must not exceed this.
    """
    return _SKETCH_TOLERANCE[check_precision(precision)]


def replay_tolerance(precision: str) -> float:
    """Relative tolerance of a replayed checkpoint segment computed at ``precision``.

    The deviation of the released parameters from the float64 reference,
    relative to how far the segment moved them (and of the floating optimiser
    state, relative to its norm), must not exceed this.  Looser than
    :func:`sketch_tolerance`: float32 rounding accumulates over the segment's
    steps and through the optimiser.
    """
    return _REPLAY_TOLERANCE[check_precision(precision)]
