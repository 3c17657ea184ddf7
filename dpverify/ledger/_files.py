"""The ledger directory: file names, manifest, lock, durable file creation.

A ledger directory holds ``manifest.json`` (format version, hash algorithm,
public copy of the run header; immutable), ``records.log`` (the append-only
records file) and ``lock`` (the single-writer lock file).  Every file is
created with mode 0600 through temp file + fsync + rename + directory fsync.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from dpverify.errors import LedgerCorrupt, LedgerLocked, UnusableInput
from dpverify.ledger._payload import record_to_dict
from dpverify.ledger.records import RECORD_VERSION, RunHeader

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "RECORDS_NAME",
    "WriterLock",
    "atomic_write",
    "check_manifest",
    "fsync_dir",
    "manifest_bytes",
    "resolve_ledger_path",
]

FORMAT_NAME = "dpverify-ledger"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
RECORDS_NAME = "records.log"
LOCK_NAME = "lock"
FILE_MODE = 0o600


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or creation inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) with ``data``: temp file, fsync, rename, dir fsync."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def manifest_dict(header: RunHeader) -> dict[str, Any]:
    """The manifest's content for a ledger with ``header``."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "hash": "sha256",
        "record_version": RECORD_VERSION,
        "records_file": RECORDS_NAME,
        "header": record_to_dict(header),
    }


def manifest_bytes(header: RunHeader) -> bytes:
    """Canonical manifest bytes (sorted keys, indent 1, trailing newline)."""
    text = json.dumps(manifest_dict(header), sort_keys=True, indent=1, ensure_ascii=True)
    return (text + "\n").encode("ascii")


def check_manifest(ledger_dir: Path, header: RunHeader | None) -> str | None:
    """Why the manifest is not the canonical one for ``header`` (None if it is).

    ``header`` is the first record of the records file; ``None`` checks only
    that the manifest parses and names this format.
    """
    try:
        raw = (ledger_dir / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        return f"{MANIFEST_NAME} unreadable: {exc.strerror}"
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{MANIFEST_NAME} is not valid JSON"
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        return f"{MANIFEST_NAME} does not describe a {FORMAT_NAME}"
    if data.get("format_version") != FORMAT_VERSION:
        return f"{MANIFEST_NAME}: unsupported format_version {data.get('format_version')!r}"
    if header is not None and raw != manifest_bytes(header):
        return f"{MANIFEST_NAME} does not match the run header record (altered?)"
    return None


def is_ledger_dir(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file() or (path / RECORDS_NAME).is_file()


def resolve_ledger_path(path: str | os.PathLike[str]) -> Path:
    """The ledger directory for ``path``: a ledger dir, or a run dir holding ``ledger/``.

    Raises:
        UnusableInput: the path does not exist or holds no ledger.
    """
    p = Path(path)
    if not p.exists():
        raise UnusableInput(f"{p}: no such file or directory")
    if not p.is_dir():
        raise UnusableInput(f"{p}: not a ledger directory or run directory")
    if is_ledger_dir(p):
        return p
    if is_ledger_dir(p / "ledger"):
        return p / "ledger"
    raise UnusableInput(f"{p}: not a dpverify ledger (no {MANIFEST_NAME}) or run directory")


def require_complete(ledger_dir: Path) -> None:
    """Both manifest and records file present, else UnusableInput/LedgerCorrupt."""
    has_manifest = (ledger_dir / MANIFEST_NAME).is_file()
    has_records = (ledger_dir / RECORDS_NAME).is_file()
    if not has_records and has_manifest:
        raise UnusableInput(f"{ledger_dir}: ledger creation did not complete (no {RECORDS_NAME})")
    if not has_manifest:
        raise LedgerCorrupt(f"{ledger_dir}: {MANIFEST_NAME} is missing", record_index=0)


class WriterLock:
    """Exclusive ``flock`` on ``ledger/lock``: one writer per ledger.

    Raises:
        LedgerLocked: another writer (any process, or another handle in this
            one) holds the lock.
    """

    def __init__(self, ledger_dir: Path) -> None:
        path = ledger_dir / LOCK_NAME
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LedgerLocked(f"{ledger_dir}: another writer holds the ledger lock") from None
            raise

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
