"""Integrity check: the ledger is intact, complete and structurally consistent.

What is checked, in order:

1. The hash chain, framing and checksums verify (:func:`dpverify.ledger.verify_ledger`).
   A bad record in the middle is corruption: the check fails and the verdict is
   ``unverifiable``; the reason names the first bad record.
2. Steps are contiguous: the first step is 0 and each step is the previous + 1,
   except right after a :class:`~dpverify.ledger.Resume` record, where the next
   step is the resume point (at most one past the last step recorded).
3. Resumes are consistent: a resume that names a checkpoint digest names a
   checkpoint recorded earlier at the resume step; checkpoints never claim
   more steps than were recorded (write-ahead rule).
4. Every sampled index lies in ``[0, N)``.
5. The seal, if present, is last and agrees with the steps recorded.

An unsealed ledger (a crashed or still-running run) or one with a torn tail is
not corrupt: the complete prefix is audited and the check warns that it was
audited up to its last complete step.
"""

from __future__ import annotations

from typing import Any

from audits.check import CheckResult
from dpverify.ledger.records import Checkpoint, Resume, RunHeader, Seal, Step

__all__ = ["check_integrity", "structural_problems"]

_NAME = "integrity"


def structural_problems(ledger: Any) -> list[str]:
    """Plain-words descriptions of structural inconsistencies in ``ledger``.

    Args:
        ledger: a :class:`dpverify.ledger.Ledger` (or anything with ``header``
            and ``records`` in ledger order).

    Returns:
        One line per problem found (empty when the structure is consistent).
        Never mentions sampled indices.
    """
    problems: list[str] = []
    n = ledger.header.dataset_size
    last = -1  # last logical step recorded
    expected = 0  # next logical step index
    executed = 0
    checkpoints: dict[str, int] = {}
    sealed_at: int | None = None
    for position, record in enumerate(ledger.records):
        if sealed_at is not None:
            problems.append(f"record {position} follows the seal (record {sealed_at})")
            break
        if isinstance(record, RunHeader):
            if position != 0:
                problems.append(f"record {position} is a second run header")
        elif isinstance(record, Step):
            if record.step != expected:
                what = "repeats" if record.step < expected else "skips ahead of"
                problems.append(
                    f"record {position}: step {record.step} {what} the expected step {expected} "
                    "without a resume record"
                )
            if record.indices.size and int(record.indices[-1]) >= n:
                problems.append(
                    f"record {position}: step {record.step} samples an index outside [0, N={n})"
                )
            last = max(last, record.step)
            expected = record.step + 1
            executed += 1
        elif isinstance(record, Resume):
            if record.step > last + 1:
                problems.append(
                    f"record {position}: resume at step {record.step} but only steps "
                    f"0..{last} were recorded"
                )
            if record.checkpoint_digest is not None:
                at = checkpoints.get(record.checkpoint_digest)
                if at is None:
                    problems.append(
                        f"record {position}: resume names a checkpoint never recorded before it"
                    )
                elif at != record.step:
                    problems.append(
                        f"record {position}: resume at step {record.step} restores the "
                        f"checkpoint taken after {at} steps"
                    )
            expected = record.step
        elif isinstance(record, Checkpoint):
            if record.step > last + 1:
                problems.append(
                    f"record {position}: checkpoint after {record.step} steps but only "
                    f"{last + 1} were recorded (write-ahead rule broken)"
                )
            checkpoints[record.digest] = record.step
        elif isinstance(record, Seal):
            sealed_at = position
            if record.steps_executed != executed:
                problems.append(
                    f"seal says {record.steps_executed} steps were executed, "
                    f"the ledger records {executed}"
                )
            if record.final_step != expected:
                problems.append(
                    f"seal says the run ended after step {record.final_step - 1}, "
                    f"the last step executed is {expected - 1}"
                )
    if executed == 0:
        problems.append("the ledger records no steps")
    return problems


def check_integrity(verify_report: Any, ledger: Any | None) -> CheckResult:
    """Run the integrity check.

    Args:
        verify_report: the :class:`dpverify.ledger.VerifyReport` of the ledger.
        ledger: the ledger read with :func:`dpverify.ledger.read_ledger`, or
            ``None`` when it could not be read (corrupt).

    Returns:
        ``fail`` with ``details["corrupt"]`` when the chain or framing is
        broken or the structure is inconsistent (verdict ``unverifiable``);
        ``warn`` when the ledger is unsealed or has a torn tail; else ``pass``.
    """
    torn = int(getattr(verify_report, "torn_tail_bytes", 0) or 0)
    details: dict[str, Any] = {
        "records": verify_report.records,
        "steps": verify_report.steps,
        "sealed": bool(verify_report.sealed),
        "torn_tail_bytes": torn,
        "head": verify_report.head,
    }
    if not verify_report.ok or ledger is None:
        bad = verify_report.first_bad_record
        where = f"record {bad}" if bad is not None else "an unknown record"
        why = verify_report.reason or "integrity check failed"
        details.update(corrupt=True, first_bad_record=bad)
        return CheckResult(
            name=_NAME,
            status="fail",
            reason=f"ledger is corrupt at {where}: {why}; nothing in it can be trusted",
            details=details,
        )
    problems = structural_problems(ledger)
    steps = ledger.steps
    logical = max((s.step for s in steps), default=-1) + 1
    details.update(
        corrupt=bool(problems),
        logical_steps=logical,
        resumes=len(getattr(ledger, "resumes", ())),
        checkpoints=len(getattr(ledger, "checkpoints", ())),
        problems=problems[:20],
    )
    if problems:
        extra = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return CheckResult(
            name=_NAME,
            status="fail",
            reason=f"ledger is inconsistent: {problems[0]}{extra}",
            details=details,
        )
    notes = []
    if ledger.seal is None:
        notes.append("the ledger is not sealed (the run crashed or is still running)")
    if torn:
        notes.append(f"a torn tail of {torn} bytes was ignored (the writer died mid-record)")
    if notes:
        return CheckResult(
            name=_NAME,
            status="warn",
            reason="; ".join(notes) + f": audited up to its last complete step ({logical - 1})",
            details=details,
        )
    resumes = details["resumes"]
    tail = f", {resumes} resume(s) consistent" if resumes else ""
    return CheckResult(
        name=_NAME,
        status="pass",
        reason=f"hash chain verifies; {len(steps)} steps contiguous{tail}; sealed",
        details=details,
    )
