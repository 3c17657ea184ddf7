"""The heads file: periodic exports of the chain head (docs/ledger-format.md §3.2).

A hash chain alone can be rebuilt by whoever holds the records file, and a cut
at a frame boundary leaves a valid shorter chain.  So the writer also appends,
at creation and at every synchronous commit (``flush()``, around each
checkpoint, at resume and at close), one ASCII line ``COUNT HEAD\\n`` to
``ledger/heads`` (mode 0600): the number of records then durable and the hex
chain head after them.  The line is written only after those records are
synced, so an honest crash never leaves a line ahead of the records file.

Readers cross-check every line: the chain head after ``COUNT`` records must
equal ``HEAD``, and the ledger must hold at least ``COUNT`` complete records.
A copy of the file kept elsewhere (e.g. sent to the auditor during training)
can be checked the same way (``verify_ledger(path, heads=COPY)``), which is
what makes rewriting the chain detectable by someone who holds the ledger.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from dpverify.errors import LedgerCorrupt, UnusableInput

__all__ = ["HEADS_NAME", "Commitment", "format_line", "prepare_for_append", "read_heads"]

HEADS_NAME = "heads"
_LINE = re.compile(rb"([1-9][0-9]{0,18}) ([0-9a-f]{64})")


@dataclasses.dataclass(frozen=True, slots=True)
class Commitment:
    """One heads line: after ``count`` records the chain head was ``head`` (hex)."""

    line: int
    count: int
    head: str


def format_line(count: int, head: str) -> bytes:
    """The heads line for ``count`` records with chain head ``head`` (hex)."""
    return f"{count} {head}\n".encode("ascii")


def read_heads(path: Path, *, required: bool = False) -> list[Commitment]:
    """Parse a heads file; a last line without its newline (torn) is ignored.

    Args:
        path: the heads file.
        required: the file was named by the user (a copy kept elsewhere): a
            missing, empty or malformed file is bad input
            (:class:`UnusableInput`), not a damaged ledger.

    Raises:
        UnusableInput: the file cannot be read (or, when required, is
            missing, has no complete line, or a malformed line).
        LedgerCorrupt: a complete line of the ledger's own heads file is
            malformed (record_index 0: nothing the ledger holds can be vouched
            for by a damaged heads file).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise UnusableInput(f"{path}: no such heads file") from None
        return []
    except OSError as exc:
        raise UnusableInput(f"{path}: cannot read ({exc.strerror})") from None
    out: list[Commitment] = []
    complete = data[: data.rfind(b"\n") + 1]
    if required and not complete:  # a copy the user named must hold at least one line
        raise UnusableInput(f"{path} is not a heads file (no complete 'COUNT HEAD' line)")
    for number, raw in enumerate(complete.split(b"\n")[:-1], start=1):
        match = _LINE.fullmatch(raw)
        if match is None and required:  # the user's file is the bad input, not the ledger
            raise UnusableInput(
                f"{path} is not a heads file (line {number} is not 'COUNT HEAD')"
            )
        if match is None:
            raise LedgerCorrupt(
                f"{path.name} line {number} is malformed (expected 'COUNT HEAD')",
                record_index=0,
            )
        out.append(Commitment(number, int(match[1]), match[2].decode("ascii")))
    return out


def prepare_for_append(path: Path) -> int:
    """Open (creating, mode 0600) ``path`` for appending; cut a torn last line.

    Returns:
        The open file descriptor (``O_WRONLY | O_APPEND``).
    """
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if created:
            os.fchmod(fd, 0o600)
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep != size:
                os.ftruncate(fd, keep)
                os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd
