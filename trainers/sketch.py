"""Update sketch: k fixed random projections of the noisy averaged gradient.

The masked trainer records, for every logical step, ``k`` (default 8) numbers

    s_j = Σ_leaves Σ_n r_j(leaf, n) · g(leaf, n),        j = 0 … k−1,

where g is the noisy averaged gradient handed to the optimiser and r_j are
Rademacher (±1) directions.  The directions come from a PUBLIC constant seed
(:data:`SKETCH_SEED`) through an integer hash (MurmurHash3's 32-bit finaliser),
so they need no storage, cost a few integer operations per parameter inside
``jit``, and are reproduced exactly by the float64 NumPy implementation the
reference trainer uses.  E[s_j²] = ‖g‖², so the sketch's scale is the
gradient's norm; replay compares sketches relative to that scale (see
:func:`compare_sketches`).  The sketch is a digest for *replay*, not a
commitment: it reveals only k linear functionals of a noised quantity.

Precisely: let g be the concatenation of all leaves, raveled in C order, in
``jax.tree_util.tree_leaves`` order (frozen leaves included), and n = 0, 1, …
a position in g.  Then r_j(n) = −1 if the top bit of
``fmix32(n · 0x9E3779B1 + salt_j mod 2³²)`` is set, else +1, with
``salt_j = fmix32(seed · 0x27D4EB2F + j · 0x9E3779B9 + 1 mod 2³²)``.  One
vectorised hash over the flat vector keeps the compiled graph small.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_SKETCH_DIM",
    "SKETCH_SEED",
    "SketchComparison",
    "compare_sketches",
    "sketch_jax",
    "update_sketch",
]

#: Public seed of the sketch directions (a constant: anyone can recompute them).
SKETCH_SEED = 0x5EED5EED
#: Default number of projections k.
DEFAULT_SKETCH_DIM = 8

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1


def _fmix32_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & _M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & _M32
    x ^= x >> 16
    return x


def _salt(seed: int, j: int) -> int:
    return _fmix32_int(seed * 0x27D4EB2F + j * 0x9E3779B9 + 1)


def _fmix32(x, xp):
    x = x ^ (x >> xp.uint32(16))
    x = x * xp.uint32(0x85EBCA6B)
    x = x ^ (x >> xp.uint32(13))
    x = x * xp.uint32(0xC2B2AE35)
    return x ^ (x >> xp.uint32(16))


def _salts(k: int, seed: int) -> np.ndarray:
    return np.array([_salt(seed, j) for j in range(k)], dtype=np.uint32)


def _negative(n, salts, xp):
    """Boolean ``(k, len(n))``: true where direction j has sign −1 at flat positions ``n``."""
    h = _fmix32(n[None, :] * xp.uint32(_GOLDEN) + salts[:, None], xp)
    return (h >> xp.uint32(31)) == xp.uint32(1)


def sketch_jax(tree: Any, *, k: int = DEFAULT_SKETCH_DIM, seed: int = SKETCH_SEED) -> Any:
    """The sketch of a pytree of JAX arrays, as a float32 ``(k,)`` array (jit-friendly)."""
    import jax
    import jax.numpy as jnp

    leaves = [jnp.ravel(a).astype(jnp.float32) for a in jax.tree_util.tree_leaves(tree)]
    flat = jnp.concatenate(leaves) if leaves else jnp.zeros((0,), jnp.float32)
    n = jax.lax.iota(jnp.uint32, flat.size)
    neg = _negative(n, jnp.asarray(_salts(k, seed)), jnp)
    return jnp.sum(jnp.where(neg, -flat[None, :], flat[None, :]), axis=1)


def update_sketch(
    tree: Any, *, k: int = DEFAULT_SKETCH_DIM, seed: int = SKETCH_SEED
) -> tuple[float, ...]:
    """The sketch of a pytree of arrays, computed in float64 NumPy.

    This is the implementation the reference trainer and the auditor use; it
    equals :func:`sketch_jax` up to floating-point rounding.
    """
    import jax

    leaves = [np.ravel(np.asarray(a, dtype=np.float64)) for a in jax.tree_util.tree_leaves(tree)]
    flat = np.concatenate(leaves) if leaves else np.zeros(0)
    salts = _salts(k, seed)
    total = np.zeros(k, dtype=np.float64)
    chunk = 1 << 20
    for start in range(0, flat.size, chunk):  # bounded memory for large models
        part = flat[start : start + chunk]
        n = np.arange(start, start + part.size, dtype=np.uint32)
        neg = _negative(n, salts, np)
        total += np.where(neg, -part[None, :], part[None, :]).sum(axis=1)
    return tuple(float(v) for v in total)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SketchComparison:
    """A recorded sketch against a recomputed (reference) one.

    Attributes:
        max_abs_deviation: max_j |recorded_j − reference_j|.
        max_rel_deviation: ``max_abs_deviation`` / scale, where scale is the
            root-mean-square of the reference sketch (≈ ‖g‖).
        tolerance: the relative tolerance applied.
        ok: ``max_rel_deviation <= tolerance`` (false for NaN or length mismatch).
    """

    max_abs_deviation: float
    max_rel_deviation: float
    tolerance: float
    ok: bool


def compare_sketches(
    recorded: Any, reference: Any, *, tolerance: float | None = None, precision: str = "float32"
) -> SketchComparison:
    """Compare a recorded sketch with the reference trainer's.

    Args:
        recorded: the ledger's ``Step.update_sketch``.
        reference: the reference sketch (:func:`update_sketch` of the float64
            reference gradient).
        tolerance: relative tolerance; defaults to
            :func:`trainers.precision.sketch_tolerance` of ``precision``.
        precision: the run's precision (used when ``tolerance`` is ``None``).
    """
    from trainers.precision import sketch_tolerance

    tol = float(sketch_tolerance(precision) if tolerance is None else tolerance)
    a = np.asarray(recorded, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return SketchComparison(
            max_abs_deviation=math.inf, max_rel_deviation=math.inf, tolerance=tol, ok=False
        )
    dev = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.sqrt(np.mean(b**2))) if b.size else 0.0
    rel = dev / scale if scale > 0 else (0.0 if dev == 0 else math.inf)
    ok = bool(np.isfinite(rel) and rel <= tol)
    if math.isnan(dev):
        rel = math.nan
    return SketchComparison(max_abs_deviation=dev, max_rel_deviation=rel, tolerance=tol, ok=ok)
