"""The one family of errors dpverify raises on purpose.

Every error a user can cause derives from :class:`DpverifyError`.  The CLI turns
each into one line on stderr and an exit code; library callers can catch the
specific subclass.

* :class:`InvalidArgument` — a bad value was passed (exit code 2).  Messages name
  the field and the value, e.g. ``sampling_rate=1.5 must be in (0, 1]``.
* :class:`UnusableInput` — a path is missing or is not what it should be
  (exit code 2).
* :class:`LedgerError` and subclasses — problems with a ledger on disk.
"""

from __future__ import annotations

__all__ = [
    "DpverifyError",
    "InvalidArgument",
    "LedgerCorrupt",
    "LedgerError",
    "LedgerLocked",
    "UnusableInput",
]


class DpverifyError(Exception):
    """Base class of every error dpverify raises deliberately."""

    #: Exit code the CLI uses when this error escapes a command.
    exit_code: int = 2


class InvalidArgument(DpverifyError, ValueError):
    """An argument or configuration value is outside its valid range."""


class UnusableInput(DpverifyError):
    """An input path is missing, unreadable or of the wrong kind."""


class LedgerError(DpverifyError):
    """A ledger cannot be used for the requested operation."""


class LedgerLocked(LedgerError):
    """Another writer holds the ledger's lock (one writer at a time)."""


class LedgerCorrupt(LedgerError):
    """The ledger fails its integrity checks (checksum, sequence or hash chain).

    Attributes:
        record_index: zero-based index of the first bad record, if known.
    """

    exit_code = 1

    def __init__(self, message: str, *, record_index: int | None = None) -> None:
        super().__init__(message)
        self.record_index = record_index
