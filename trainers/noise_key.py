"""A run's private randomness: the noise key file and the private seed file.

Two secrets drive a DP-SGD run and neither may appear in any public file:

* the **noise key**, 32 random bytes at ``RUN_DIR/noise.key`` (mode 0600).  The
  Gaussian noise of logical step ``t`` is drawn from
  ``jax.random.fold_in(noise_prng_key(key), t)`` (see ``trainers/dpsgd.py``).
  The ledger header records only its SHA-256 digest (``noise_key_digest``), so
  an auditor handed the key file can confirm it is the run's key and replay
  steps exactly;
* the **sampler seed** (and the model initialisation seed), kept in
  ``RUN_DIR/private.json`` (mode 0600).  Whoever knows the sampler seed knows
  every batch, and privacy amplification by subsampling assumes the batches
  are secret.

Files are written through :func:`dpverify.private_files.write_private_file`
(atomic, durable, mode 0600 from the start); the key file's creation, digest
and loading live there too and are re-exported here.

This module is light (no JAX at import time).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from dpverify.errors import UnusableInput
from dpverify.private_files import (
    NOISE_KEY_BYTES,
    NOISE_KEY_FILE,
    create_noise_key,
    load_noise_key,
    noise_key_digest,
    write_private_file,
)

__all__ = [
    "NOISE_KEY_BYTES",
    "NOISE_KEY_FILE",
    "PRIVATE_FILE",
    "create_noise_key",
    "load_noise_key",
    "noise_key_digest",
    "noise_prng_key",
    "read_private",
    "write_private",
    "write_private_file",
]

#: File name of the private seeds inside a run directory.
PRIVATE_FILE = "private.json"


def noise_prng_key(key: bytes) -> Any:
    """The JAX PRNG key (raw ``uint32[2]``, threefry) derived from the key bytes.

    ``SHA-256("dpverify-noise-v1" || key)``, first 8 bytes read as two
    little-endian uint32 words.  Deterministic: the trainer and the replaying
    auditor derive the same key from the same file.
    """
    import jax.numpy as jnp
    import numpy as np

    words = np.frombuffer(hashlib.sha256(b"dpverify-noise-v1" + key).digest()[:8], dtype="<u4")
    return jnp.asarray(words.astype(np.uint32))


def write_private(run_dir: str | os.PathLike, values: dict[str, Any]) -> None:
    """Save the run's private seeds (JSON) at ``RUN_DIR/private.json``, mode 0600."""
    data = json.dumps(values, indent=2, sort_keys=True).encode() + b"\n"
    write_private_file(Path(run_dir) / PRIVATE_FILE, data)


def read_private(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Load ``RUN_DIR/private.json``.

    Raises:
        UnusableInput: missing or not valid JSON.
    """
    path = Path(run_dir) / PRIVATE_FILE
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UnusableInput(f"{path} cannot be read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UnusableInput(f"{path} is not valid JSON: {exc.msg}") from None
