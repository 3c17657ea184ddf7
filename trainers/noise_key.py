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

Files are written atomically (temp file, fsync, rename, directory fsync) with
mode 0600 from the start, so a secret is never readable by others, not even
for an instant.

This module is light (no JAX at import time).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from dpverify.errors import UnusableInput

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

#: Size of a noise key in bytes.
NOISE_KEY_BYTES = 32
#: File name of the noise key inside a run directory.
NOISE_KEY_FILE = "noise.key"
#: File name of the private seeds inside a run directory.
PRIVATE_FILE = "private.json"


def write_private_file(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    Temp file in the same directory (created 0600), fsync, ``os.replace``,
    then fsync of the directory so the rename itself is durable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def noise_key_digest(key: bytes) -> str:
    """SHA-256 hex digest of the key bytes (what the ledger header records)."""
    return hashlib.sha256(key).hexdigest()


def create_noise_key(run_dir: str | os.PathLike) -> tuple[bytes, str]:
    """Draw a fresh key from the OS's CSPRNG and save it at ``RUN_DIR/noise.key``.

    Returns:
        ``(key, digest)``: the 32 key bytes and their SHA-256 hex digest.

    Raises:
        UnusableInput: a key file already exists there (never overwritten).
    """
    path = Path(run_dir) / NOISE_KEY_FILE
    if path.exists():
        raise UnusableInput(f"{path} already exists; refusing to overwrite a noise key")
    key = secrets.token_bytes(NOISE_KEY_BYTES)
    write_private_file(path, key)
    return key, noise_key_digest(key)


def load_noise_key(path: str | os.PathLike, *, expected_digest: str | None = None) -> bytes:
    """Read a noise key file, optionally checking it against the header's digest.

    Args:
        path: the key file, or a run directory holding ``noise.key``.
        expected_digest: ``RunHeader.noise_key_digest``; checked when given.

    Raises:
        UnusableInput: the file is missing, has the wrong size, or its digest
            is not ``expected_digest``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / NOISE_KEY_FILE
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise UnusableInput(f"noise key {path} cannot be read: {exc.strerror}") from None
    if len(key) != NOISE_KEY_BYTES:
        raise UnusableInput(f"noise key {path} has {len(key)} bytes, expected {NOISE_KEY_BYTES}")
    if expected_digest is not None and noise_key_digest(key) != expected_digest:
        raise UnusableInput(f"noise key {path} does not match the ledger's noise_key_digest")
    return key


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
