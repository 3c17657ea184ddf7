"""Secret files of a run: durable 0600 writes and the noise key.

A run directory holds secrets that must never be readable by anyone but the
owner, not even for an instant: the **noise key** (``noise.key``, 32 bytes from
the operating system's CSPRNG; the ledger header records only its SHA-256
digest) and, depending on the trainer, private seeds and checkpoints.  Every
trainer and recorder writes them through :func:`write_private_file`:

* the file is created with mode 0600 from the start (a temp file in the same
  directory, opened ``O_CREAT`` with mode 0600, then ``fchmod`` in case the
  umask or a pre-existing temp file interfered);
* its bytes are ``fsync``-ed, the temp file renamed over the target, and the
  directory ``fsync``-ed so the rename itself survives a crash;
* on any failure the temp file is removed and the target is untouched.

Framework-agnostic: no JAX, no torch.  The JAX trainer derives its PRNG key
from the key bytes in ``trainers/noise_key.py``; the Opacus recorder derives
a ``torch.Generator`` seed in ``dpverify/integrations/opacus``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from dpverify.errors import UnusableInput

__all__ = [
    "NOISE_KEY_BYTES",
    "NOISE_KEY_FILE",
    "create_noise_key",
    "fsync_directory",
    "load_noise_key",
    "noise_key_digest",
    "write_private_file",
]

#: Size of a noise key in bytes.
NOISE_KEY_BYTES = 32
#: File name of the noise key inside a run directory.
NOISE_KEY_FILE = "noise.key"
_MODE = 0o600


def write_private_file(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably, with mode 0600.

    Missing parent directories are created with mode 0700.  Replaces an
    existing file at ``path`` in one rename (readers see the old or the new
    content, never a mix).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: str | os.PathLike) -> None:
    """``fsync`` a directory so a creation or rename inside it is durable."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - file systems that refuse directory fsync
        pass
    finally:
        os.close(dfd)


def noise_key_digest(key: bytes) -> str:
    """SHA-256 hex digest of the key bytes (what a ledger header records)."""
    return hashlib.sha256(key).hexdigest()


def create_noise_key(run_dir: str | os.PathLike) -> tuple[bytes, str]:
    """Draw a fresh key from the OS's CSPRNG and save it at ``RUN_DIR/noise.key``.

    Returns:
        ``(key, digest)``: the 32 key bytes and their SHA-256 hex digest.

    Raises:
        UnusableInput: a key file already exists there (a key is never overwritten:
            that would orphan the ledger that recorded its digest).
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
