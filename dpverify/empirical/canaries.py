"""White-box gradient canaries: their secret design and their scores.

A run with M canaries reserves M extra example slots after its N₀ real
examples (indices N₀ … N₀+M−1; the ledger's N is N₀ + M).  Canary i is
*included* with probability ½, independently (the secret bit S_i).  The
sampler samples the M slots exactly like real examples; when slot i is
sampled and canary i is included, the trainer adds the canary's "clipped
gradient" u_i to the step's clipped sum before the noise; an excluded
canary's slot contributes exactly 0 (an example with a zero gradient, which
is the same as the example being absent under add/remove neighbouring).

Why slots for every canary rather than only the included ones: N (and hence
the public denominator q·N) must not depend on the secret bits, or the header
would publish Σ S_i.

Each direction u_i has norm exactly C (the clip norm; clipping leaves it
unchanged): s = min(16, ⌊P/M⌋) coordinates of the flattened parameter
vector (P scalars), disjoint across canaries, with random signs, each of
magnitude C/√s.  Coordinates, signs and bits are derived deterministically
from a 32-byte secret canary key (:func:`design_canaries`); the ledger header
commits to the key's SHA-256 before training, so nobody can choose the bits
after seeing the model.

Score (what the auditor computes from the released trajectory): gradient
descent moves θ against the gradient, so an included canary pushes θ along
−u_i each time it is sampled; with θ₀ the initial and θ_T the final
parameters,

    score_i = −⟨θ_T − θ₀, u_i⟩ / C = −Σ_t ⟨θ_{t+1} − θ_t, u_i⟩ / C,

the sum over steps of the update projected on the canary's direction.  The
score is a function of the released parameters only — never of the ledger's
batch membership, which would amount to revealing the Poisson sample and void
the amplification the accounted ε relies on.

Flattening (shared convention of trainer and auditor): the leaves of the
nested parameter mapping in sorted key-path order, each raveled in C order.

References: Steinke, Nasr & Jagielski 2023, arXiv:2305.08846 (gradient
canaries, Section 6); Nasr et al. 2023, "Tight Auditing of Differentially
Private Machine Learning" (Dirac gradient canaries).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_positive
from dpverify.errors import InvalidArgument

__all__ = [
    "CANARY_KEY_BYTES",
    "CanaryDesign",
    "canary_key_digest",
    "design_canaries",
    "flatten_params",
    "new_canary_key",
    "param_leaves",
]

#: Length of a canary key in bytes.
CANARY_KEY_BYTES = 32
_MAX_SUPPORT = 16
_DOMAIN = b"dpverify-canaries-v1"


def new_canary_key() -> bytes:
    """A fresh secret canary key (from the OS's CSPRNG)."""
    return secrets.token_bytes(CANARY_KEY_BYTES)


def canary_key_digest(key: bytes) -> str:
    """SHA-256 hex of the key: the public commitment written into the ledger header."""
    return hashlib.sha256(bytes(key)).hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class CanaryDesign:
    """The secret design of a run's canaries.

    Attributes:
        included: (M,) bool, the inclusion bits S_i.
        coordinates: (M, s) int64, each canary's coordinates in the flattened
            parameter vector (disjoint across canaries).
        signs: (M, s) float64 in {−1, +1}.
        clip_norm: C, the norm of every direction.
        num_params: P, the length of the flattened parameter vector.
    """

    included: np.ndarray
    coordinates: np.ndarray
    signs: np.ndarray
    clip_norm: float
    num_params: int

    @property
    def count(self) -> int:
        """M."""
        return int(self.included.size)

    @property
    def values(self) -> np.ndarray:
        """(M, s) entries of the directions: sign · C/√s (each row has norm C)."""
        s = self.coordinates.shape[1]
        return self.signs * (self.clip_norm / np.sqrt(s))

    def clipped_sum(self, slots: Any) -> np.ndarray:
        """Σ u_i over the included canaries among ``slots`` (canary numbers 0 … M−1).

        Returns the flattened (P,) float64 vector (zeros when none is included).
        """
        slots = np.asarray(slots, dtype=np.int64).ravel()
        if slots.size and (slots.min() < 0 or slots.max() >= self.count):
            raise InvalidArgument(f"canary slots must be in [0, {self.count})")
        out = np.zeros(self.num_params)
        chosen = slots[self.included[slots]]
        np.add.at(out, self.coordinates[chosen].ravel(), self.values[chosen].ravel())
        return out

    def scores(self, start: Any, end: Any) -> np.ndarray:
        """score_i = −⟨θ_end − θ_start, u_i⟩ / C for flattened parameter vectors."""
        a = np.asarray(start, dtype=np.float64).ravel()
        b = np.asarray(end, dtype=np.float64).ravel()
        if a.size != self.num_params or b.size != self.num_params:
            raise InvalidArgument(
                f"parameter vectors have {a.size} and {b.size} entries; the canaries "
                f"were designed for {self.num_params}"
            )
        delta = (b - a)[self.coordinates]  # (M, s)
        return -np.sum(delta * self.values, axis=1) / self.clip_norm


def design_canaries(key: bytes, *, count: int, num_params: int, clip_norm: float) -> CanaryDesign:
    """The canary design derived from ``key`` (deterministic; numpy PCG64).

    Args:
        key: the secret canary key (:data:`CANARY_KEY_BYTES` bytes).
        count: M ≥ 1 canaries; at most ``num_params``.
        num_params: P, scalars in the flattened parameter vector.
        clip_norm: C > 0.

    Raises:
        InvalidArgument: out-of-range arguments (e.g. more canaries than parameters).
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) != CANARY_KEY_BYTES:
        raise InvalidArgument(f"canary key must be {CANARY_KEY_BYTES} bytes")
    m = check_int("canaries", count, minimum=1)
    p = check_int("num_params", num_params, minimum=1)
    c = check_positive("clip_norm", clip_norm)
    if m > p:
        raise InvalidArgument(
            f"canaries={m} must be <= the model's {p} parameters (one coordinate each at least)"
        )
    s = max(1, min(_MAX_SUPPORT, p // m))
    seed = int.from_bytes(hashlib.sha256(_DOMAIN + bytes(key)).digest(), "big")
    rng = np.random.Generator(np.random.PCG64(seed))
    included = rng.integers(0, 2, size=m).astype(bool)
    coords = rng.choice(p, size=m * s, replace=False).astype(np.int64).reshape(m, s)
    signs = np.where(rng.integers(0, 2, size=(m, s)) == 1, 1.0, -1.0)
    return CanaryDesign(
        included=included, coordinates=coords, signs=signs, clip_norm=c, num_params=p
    )


def param_leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list:
    """``[(key_path, array), ...]`` of a nested parameter mapping, sorted by key path."""
    out = []
    for name in sorted(tree, key=str):
        value = tree[name]
        path = (*prefix, str(name))
        if isinstance(value, Mapping):
            out.extend(param_leaves(value, path))
        else:
            out.append((path, np.asarray(value)))
    return out


def flatten_params(tree: Mapping[str, Any]) -> np.ndarray:
    """The flattened parameter vector (float64) in the canaries' convention."""
    leaves = param_leaves(tree)
    if not leaves:
        raise InvalidArgument("the parameter tree has no arrays")
    return np.concatenate([a.astype(np.float64).ravel() for _, a in leaves])
