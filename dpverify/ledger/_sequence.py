"""The grammar of a ledger: which record may follow which.

One :class:`RunHeader` first; then steps numbered from 0, each one more than
the last, except that after ``Resume(k)`` the next step is ``k`` (with
``k ≤ last + 1``); ``Checkpoint(s)`` only for ``s ≤`` the next step (the
write-ahead rule: the steps it covers are already in the ledger); indices
below the header's ``dataset_size``; at most one :class:`Seal`, last, whose
counts match.  The writer refuses records that break it; the reader reports
them as corruption.
"""

from __future__ import annotations

from dpverify.ledger.records import Checkpoint, Record, Resume, RunHeader, Seal, Step

__all__ = ["SequenceState"]


class SequenceState:
    """Tracks the position in the grammar; :meth:`problem` says what is wrong."""

    def __init__(self) -> None:
        self.header: RunHeader | None = None
        self.next_step = 0
        self.steps = 0
        self.sealed = False
        self.records = 0

    def problem(self, record: Record) -> str | None:
        """Why ``record`` may not come next, or ``None`` if it may."""
        if self.sealed:
            return "record after the seal"
        if self.header is None:
            if not isinstance(record, RunHeader):
                return f"first record is a {record.TYPE} record, not the run header"
            return None
        if isinstance(record, RunHeader):
            return "a second run header"
        if isinstance(record, Step):
            if record.step != self.next_step:
                return f"step={record.step} out of sequence (expected step {self.next_step})"
            if record.indices.size and record.indices[-1] >= self.header.dataset_size:
                return (
                    f"step {record.step}: index {int(record.indices[-1])} out of range "
                    f"[0, {self.header.dataset_size})"
                )
            return None
        if isinstance(record, Resume):
            if record.step > self.next_step:
                return f"resume step={record.step} skips steps (at most {self.next_step})"
            return None
        if isinstance(record, Checkpoint):
            if record.step > self.next_step:
                return (
                    f"checkpoint step={record.step} ahead of the ledger "
                    f"(only {self.next_step} steps recorded: write-ahead rule)"
                )
            return None
        if isinstance(record, Seal):
            if record.steps_executed != self.steps:
                return (
                    f"seal steps_executed={record.steps_executed} but {self.steps} steps recorded"
                )
            if record.final_step != self.next_step:
                return f"seal final_step={record.final_step} but next step is {self.next_step}"
            return None
        return f"unknown record {type(record).__name__}"

    def accept(self, record: Record) -> None:
        """Advance past ``record`` (call only after :meth:`problem` returned ``None``)."""
        self.records += 1
        if isinstance(record, RunHeader):
            self.header = record
        elif isinstance(record, Step):
            self.next_step = record.step + 1
            self.steps += 1
        elif isinstance(record, Resume):
            self.next_step = record.step
        elif isinstance(record, Seal):
            self.sealed = True
