"""Verifying a ledger without raising: a report of what holds and what does not."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from dpverify.errors import LedgerCorrupt
from dpverify.ledger.reader import LedgerScan
from dpverify.ledger.records import Record

__all__ = ["VerifyReport", "verify_ledger", "verify_scan"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """Outcome of :func:`verify_ledger`.

    Attributes:
        ok: every complete record is intact (a torn tail does not make it false).
        records: number of records verified (the intact prefix when not ok).
        steps: number of Step records among them.
        head: hex chain head of the verified prefix.
        sealed: the ledger ends with a Seal record.
        torn_tail_bytes: bytes of an incomplete final record (writer died).
        first_bad_record: zero-based index of the first bad record, or None.
        reason: one line saying what is wrong (empty when ok).
    """

    ok: bool
    records: int
    steps: int
    head: str
    sealed: bool
    torn_tail_bytes: int
    first_bad_record: int | None
    reason: str

    def to_dict(self) -> dict:
        """JSON-ready dict of the report."""
        return dataclasses.asdict(self)


def verify_ledger(path: str | os.PathLike[str]) -> VerifyReport:
    """Check framing, checksums, hash chain, payloads, grammar and manifest.

    Never raises for corruption: the report says which record is bad first.

    Raises:
        UnusableInput: ``path`` is missing or is not a ledger at all.
    """
    return verify_scan(LedgerScan(path))


def verify_scan(scan: LedgerScan, records: Iterable[Record] | None = None) -> VerifyReport:
    """Consume ``records`` (default: ``scan`` itself, e.g. wrapped in a progress
    bar by the CLI) and report on the ledger ``scan`` reads."""
    try:
        for _ in scan if records is None else records:
            pass
    except LedgerCorrupt as exc:
        return VerifyReport(
            ok=False,
            records=scan.state.records,
            steps=scan.state.steps,
            head=scan.head,
            sealed=scan.state.sealed,
            torn_tail_bytes=0,
            first_bad_record=exc.record_index,
            reason=str(exc),
        )
    return VerifyReport(
        ok=True,
        records=scan.state.records,
        steps=scan.state.steps,
        head=scan.head,
        sealed=scan.state.sealed,
        torn_tail_bytes=scan.torn_tail_bytes,
        first_bad_record=None,
        reason="",
    )
