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
        heads_checked: heads-file lines (exported chain heads) that matched.
    """

    ok: bool
    records: int
    steps: int
    head: str
    sealed: bool
    torn_tail_bytes: int
    first_bad_record: int | None
    reason: str
    heads_checked: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict of the report."""
        return dataclasses.asdict(self)


def verify_ledger(
    path: str | os.PathLike[str], *, heads: str | os.PathLike[str] | None = None
) -> VerifyReport:
    """Check framing, checksums, hash chain, payloads, grammar, manifest and heads.

    Never raises for corruption: the report says which record is bad first.

    Args:
        path: ledger directory or run directory.
        heads: a copy of the heads file kept elsewhere to cross-check instead
            of ``ledger/heads`` (default: ``ledger/heads`` when present).

    Raises:
        UnusableInput: ``path`` is missing or is not a ledger at all, or
            ``heads`` is given and missing.
    """
    return verify_scan(LedgerScan(path, heads=heads))


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
            heads_checked=scan.heads_checked,
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
        heads_checked=scan.heads_checked,
    )
