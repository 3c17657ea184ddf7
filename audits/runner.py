"""The audit runner: every check over one ledger, then the verdict.

Verdict rules (documented in ``docs/certificate.md``):

* ``unverifiable`` — the integrity check failed (the ledger is corrupt or
  structurally inconsistent: nothing in it can be trusted), a check could not
  run at all (an internal error, reported as a failed check with
  ``details.error``), a check could neither confirm nor refute
  (``details.unverifiable``: a claim at δ ≥ 1/N, a sampler no accountant
  bounds, a claim inside the accountants' error interval), or the run claims
  no ε (nothing to certify);
* ``refuted`` — any other check failed, including the privacy check when the
  claimed ε is below the recomputed one;
* ``certified`` — otherwise (``warn`` and ``skip`` statuses do not refute; the
  summary lists them).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from audits import _early_privacy
from audits.certificate import Certificate, empirical_section, public_run_config
from audits.check import CheckResult
from audits.configuration import check_configuration
from audits.empirical import DEFAULT_CONFIDENCE, check_empirical
from audits.evidence import InclusionCounts, collect_evidence
from audits.integrity import check_integrity
from audits.mechanics import check_mechanics
from audits.privacy import check_privacy, claimed_privacy
from audits.replay import DEFAULT_REPLAY_STEPS, check_replay
from audits.sampling import check_sampling, last_executions
from dpverify._validate import check_int, check_probability
from dpverify.errors import DpverifyError, LedgerCorrupt, UnusableInput

__all__ = ["audit_ledger", "run_audit"]


class _StreamedChecks:
    """What the audit computes from the index arrays, fed record by record in one pass.

    :func:`run_audit` reads the ledger once with
    :func:`dpverify.ledger.outline.read_outline`; each verified record comes
    here as it is decoded: the sampling battery
    (:class:`dpverify.stats.SamplingStream`: plan and every segment's
    statistics) and the inclusion counts of the report.  The report's counts
    are the battery's own per-example counts when the battery runs (one
    count per index, not two; the few re-executions the battery leaves out
    or that a resume superseded are re-read and corrected at the end), else
    counted here (:class:`audits.evidence.InclusionCounts`).  Nothing keeps
    the index arrays, so memory is O(N + T), not O(recorded indices).  An
    error in the battery is kept and raised where the sampling check runs,
    so it is reported as that check's failure, as when the check reads the
    ledger itself.
    """

    def __init__(self, *, alpha: float, seed: int, processes: int | None = None) -> None:
        self._alpha, self._seed, self._processes = alpha, seed, processes
        self._sampling: Any = None
        self._error: BaseException | None = None
        self._finished: Any = None  # the battery's stream after finish (its counts)
        self._dataset_size: int | None = None
        self.counts: InclusionCounts | None = None

    def add(self, record: Any) -> None:
        from dpverify import stats
        from dpverify.ledger import RunHeader, Step

        if isinstance(record, RunHeader):
            self._dataset_size = int(record.dataset_size)
            if str(record.sampler).lower() in stats.NULL_SAMPLERS:
                try:
                    self._sampling = stats.SamplingStream(
                        record, alpha=self._alpha, seed=self._seed, processes=self._processes
                    )
                except Exception as exc:  # raised again by the sampling check
                    self._error = exc
            if self._sampling is None:  # no battery to share the counts with
                self.counts = InclusionCounts(record.dataset_size)
        elif isinstance(record, Step):
            if self.counts is not None:
                self.counts.add(record.indices)
            if self._sampling is not None:
                try:
                    self._sampling.add(record)
                except Exception as exc:  # raised again by the sampling check
                    self._sampling, self._error = None, exc

    def sampling_result(self) -> Any:
        """The battery's :class:`~dpverify.stats.LedgerSampling` (or its error, raised)."""
        if self._error is not None:
            raise self._error
        if self._sampling is None:
            raise RuntimeError("the sampling battery was not fed")
        self._finished, self._sampling = self._sampling, None
        self._error = RuntimeError("the sampling battery was finished already")
        return self._finished.finish()

    def evidence_counts(self, ledger: Any, logical: list[Any]) -> InclusionCounts | None:
        """The inclusion counts of the last executions only.

        From the battery's counts of the executions it kept, plus the
        reproduced re-executions it left out; then every execution a later one
        superseded is un-counted (those few are re-read).  When the battery
        stopped on an error, the last executions are re-read and counted.
        """
        if self._dataset_size is None:
            return None
        last = {id(s) for s in logical}
        stream = self._finished if self._finished is not None else self._sampling
        if self.counts is not None:
            counts, self.counts = self.counts, None
            for s in ledger.steps:
                if id(s) not in last:  # a step executed again after a resume
                    counts.remove(np.asarray(s.indices))
            return counts
        counts = InclusionCounts(self._dataset_size)
        if stream is None:  # the battery stopped on an error: a second read
            for s in logical:
                counts.add(np.asarray(s.indices))
            return counts
        counts.add_counts(*stream.kept_counts())
        for s, kept in zip(ledger.steps, stream.kept(), strict=True):
            if not kept:  # a reproduced re-execution: counted in the report, not the battery
                counts.add(np.asarray(s.indices))
            if id(s) not in last:
                counts.remove(np.asarray(s.indices))
        return counts


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ScanReport:
    """A VerifyReport built from one read of the ledger (no second scan needed)."""

    ok: bool
    reason: str = ""
    first_bad_record: int | None = None
    records: int = 0
    steps: int = 0
    head: str | None = None
    sealed: bool = False
    torn_tail_bytes: int = 0


def _guarded(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    """Run one check; an unexpected exception becomes a failed, flagged result."""
    try:
        return fn()
    except MemoryError:  # an input too large for this machine: bad input, not a failed check
        raise
    except DpverifyError as exc:
        if isinstance(exc, UnusableInput):
            raise
        reason = f"check could not run: {' '.join(str(exc).split())}"
    except Exception as exc:  # an auditor reports, it does not crash
        reason = f"check could not run: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return CheckResult(name=name, status="fail", reason=reason, details={"error": True})


def _skipped(name: str, reason: str) -> CheckResult:
    return CheckResult(name=name, status="skip", reason=reason)


def _verdict(checks: list[CheckResult], claimed: float | None) -> tuple[str, str]:
    integrity = checks[0]
    if integrity.failed:
        return "unverifiable", integrity.reason
    failures = [c for c in checks if c.failed]
    # a check that ran but could neither confirm nor refute (details "unverifiable",
    # e.g. privacy without an upper bound) makes the run unverifiable, like an error
    errors = [c for c in failures if c.details.get("error") or c.details.get("unverifiable")]
    genuine = [c for c in failures if c not in errors]
    if genuine:
        others = [c.name for c in genuine[1:]]
        more = f" (also failed: {', '.join(others)})" if others else ""
        return "refuted", f"{genuine[0].name}: {genuine[0].reason}{more}"
    if errors:
        return "unverifiable", f"{errors[0].name}: {errors[0].reason}"
    if claimed is None:
        return "unverifiable", "the run claims no ε: there is nothing to certify"
    skipped = [c.name for c in checks if c.status == "skip"]
    warned = [c.name for c in checks if c.status == "warn"]
    notes = [f"warning: {', '.join(warned)}"] if warned else []
    if skipped:
        notes.append(f"not run: {', '.join(skipped)}")
    tail = f" ({'; '.join(notes)})" if notes else ""
    ran = "every check that ran" if skipped else "every check"
    return "certified", f"{ran} passed and the claimed ε holds{tail}"


def audit_ledger(
    ledger: Any | None,
    *,
    verify_report: Any,
    run_dir: Path | None = None,
    alpha: float = 1e-3,
    replay_steps: int | None = DEFAULT_REPLAY_STEPS,
    noise_key_path: Path | None = None,
    progress: bool = False,
    seed: int = 0,
    replay_seed: int | None = None,
    empirical_confidence: float = DEFAULT_CONFIDENCE,
    canary_scores_path: Path | None = None,
    _streamed: _StreamedChecks | None = None,
    max_groups: int | None = None,
    _epsilon_of: Any = None,
) -> Certificate:
    """Audit an already-read ledger (the core of :func:`run_audit`).

    Args:
        ledger: the ledger from :func:`dpverify.ledger.read_ledger`, or ``None``
            when it is corrupt.
        verify_report: its :class:`dpverify.ledger.VerifyReport`.
        run_dir: the run directory for replay, or ``None``.
        alpha: family-wise false-positive rate of the sampling battery.
        replay_steps: replay budget in steps (whole checkpoint segments, plus
            always the final one and those touching a resume); ``None``
            disables replay.
        noise_key_path: noise key file for replay (default ``RUN_DIR/noise.key``).
        progress: show a progress bar on stderr (only on a TTY).
        seed: seed of the battery's Monte-Carlo tests.
        replay_seed: the auditor's seed of the random choice of replayed
            segments; ``None`` draws a fresh one (stated in the certificate).
        empirical_confidence: confidence of the canaries' ε lower bound.
        canary_scores_path: canary scores JSON for runs that carry their own
            (:func:`audits.empirical.load_scores_file`); default: computed
            from the run directory's checkpoints and canary key.
        max_groups: distinct (q, σ) pairs PLD composes one by one (``None``:
            :data:`dpverify.accounting.DEFAULT_MAX_GROUPS`; see
            :func:`dpverify.accounting.compute_epsilon`).

    Returns:
        The :class:`~audits.certificate.Certificate`.
    """
    from tqdm import tqdm

    show = progress and sys.stderr.isatty()
    bar = tqdm(total=7, desc="audit", unit="check", disable=not show, leave=False)
    checks = [check_integrity(verify_report, ledger)]
    bar.update(1)
    head = getattr(verify_report, "head", None)
    if checks[0].failed:
        why = "the ledger failed its integrity check"
        for name in ("configuration", "sampling", "mechanics", "privacy", "replay", "empirical"):
            checks.append(_skipped(name, why))
        bar.close()
        verdict, reason = _verdict(checks, None)
        # The claim itself is still stated when the header could be read.
        claimed_eps, claimed_delta = claimed_privacy(ledger) if ledger is not None else (None, None)
        return Certificate(
            verdict=verdict,
            verdict_reason=reason,
            checks=tuple(checks),
            claimed_epsilon=claimed_eps,
            delta=claimed_delta,
            ledger_head=head,
            sealed=bool(getattr(verify_report, "sealed", False)),
            steps=getattr(verify_report, "steps", None),
            run=public_run_config(ledger.header) if ledger is not None else {},
        )
    assert ledger is not None  # an unreadable ledger fails the integrity check above
    header = ledger.header
    claimed, delta = claimed_privacy(ledger)
    checks.append(
        _guarded(
            "configuration",
            lambda: check_configuration(header, claimed_epsilon=claimed, delta=delta),
        )
    )
    bar.update(1)
    streamed_result = _streamed.sampling_result if _streamed is not None else None
    checks.append(
        _guarded(
            "sampling",
            lambda: check_sampling(
                ledger, alpha=alpha, seed=seed, sampling_result=streamed_result
            ),
        )
    )
    bar.update(1)
    checks.append(_guarded("mechanics", lambda: check_mechanics(header, ledger.steps)))
    bar.update(1)
    report_box: list[Any] = []

    def _privacy() -> CheckResult:
        sampling = next(c for c in checks if c.name == "sampling")
        rates_verified = sampling.status == "pass" and sampling.details.get("rates_verified")
        result, report = check_privacy(
            ledger, rates_verified=bool(rates_verified), max_groups=max_groups,
            **({"epsilon_of": _epsilon_of} if _epsilon_of is not None else {}),
        )  # fmt: skip
        report_box.append(report)
        return result

    checks.append(_guarded("privacy", _privacy))
    bar.update(1)
    checks.append(
        _guarded(
            "replay",
            lambda: check_replay(
                run_dir,
                ledger=ledger,
                budget=replay_steps,
                seed=replay_seed,
                noise_key_path=noise_key_path,
            ),
        )
    )
    bar.update(1)
    checks.append(
        _guarded(
            "empirical",
            lambda: check_empirical(
                ledger,
                run_dir,
                claimed_epsilon=claimed,
                delta=delta,
                confidence=empirical_confidence,
                scores_path=canary_scores_path,
            ),
        )
    )
    bar.update(1)
    bar.close()
    epsilon_report = report_box[0] if report_box else None
    verdict, reason = _verdict(checks, claimed)
    logical = last_executions(ledger.steps)
    counts = _streamed.evidence_counts(ledger, logical) if _streamed is not None else None
    return Certificate(
        verdict=verdict,
        verdict_reason=reason,
        checks=tuple(checks),
        epsilon=epsilon_report.to_json() if epsilon_report is not None else None,
        claimed_epsilon=claimed,
        delta=delta,
        steps=len(ledger.steps),
        logical_steps=len(logical),
        ledger_head=ledger.head,
        sealed=ledger.seal is not None,
        run=public_run_config(header),
        evidence=collect_evidence(ledger, steps=logical, delta=delta, counts=counts),
        empirical=empirical_section(checks[-1]),
    )


def run_audit(
    path: str | os.PathLike[str],
    *,
    alpha: float = 1e-3,
    replay_steps: int | None = DEFAULT_REPLAY_STEPS,
    noise_key_path: str | os.PathLike[str] | None = None,
    progress: bool = False,
    seed: int = 0,
    replay_seed: int | None = None,
    empirical_confidence: float = DEFAULT_CONFIDENCE,
    canary_scores_path: str | os.PathLike[str] | None = None,
    max_groups: int | None = None,
    processes: int | None = None,
) -> Certificate:
    """Audit the run at ``path`` and issue its certificate.

    Args:
        path: a run directory (holding ``ledger/``) or a ledger directory.
        alpha: family-wise false-positive rate of the sampling battery, in (0, 1).
        replay_steps: replay budget in steps: whole checkpoint segments drawn
            at random, plus always the final segment and every segment
            touching a resume; ``None`` disables replay.
        noise_key_path: the run's noise key file, when not ``RUN_DIR/noise.key``.
        progress: show a progress bar on stderr.
        seed: seed of the battery's Monte-Carlo tests.
        replay_seed: the auditor's seed of the replayed segments' choice
            (``None``: fresh from the OS; stated in the certificate).
        empirical_confidence: confidence in (0, 1) of the canaries' ε lower
            bound (the empirical check refutes an honest run with probability
            at most 1 − it).
        canary_scores_path: a canary scores JSON file (imported runs).
        max_groups: distinct (q, σ) pairs PLD composes one by one before it
            rounds a heterogeneous schedule into that many groups (``None``:
            the default, 1 000).
        processes: 1 keeps the whole audit in this process.  Otherwise, on
            a large ledger and a machine with two CPUs, the privacy accounting
            starts at once in a second process from the per-step fields
            (:mod:`audits._early_privacy`; its result is used only for the
            very inputs the privacy check builds), and with 2 (or ``None``
            without numba) a helper process also takes part of the sampling
            battery's per-example work (:class:`dpverify.stats.SamplingStream`).
            The certificate is the same.

    Returns:
        The certificate; a corrupt ledger gives verdict ``unverifiable``.

    Raises:
        UnusableInput: ``path`` is missing or is not a ledger / run directory,
            or ``noise_key_path`` does not exist.
        InvalidArgument: ``alpha`` or ``replay_steps`` out of range.

    Example:
        >>> cert = run_audit("runs/demo", replay_steps=None)   # doctest: +SKIP
        >>> cert.verdict, cert.exit_code                         # doctest: +SKIP
        ('certified', 0)
    """
    from dpverify import ledger as ledger_api

    check_probability("alpha", alpha, allow_one=False)
    check_probability("empirical_confidence", empirical_confidence, allow_one=False)
    scores = None
    if canary_scores_path is not None:
        scores = Path(canary_scores_path)
        if not scores.is_file():
            raise UnusableInput(f"canary scores file {scores} does not exist")
    if replay_steps is not None:
        check_int("replay_steps", replay_steps, minimum=1)
    if max_groups is not None:
        check_int("max_groups", max_groups, minimum=1)
    if processes is not None:
        check_int("processes", processes, minimum=1)
    key = None
    if noise_key_path is not None:
        key = Path(noise_key_path)
        if not key.is_file():
            raise UnusableInput(f"noise key file {key} does not exist")
    ledger_path = Path(ledger_api.resolve_ledger_path(path))
    run_dir = ledger_path.parent if ledger_path.name == "ledger" else None
    streamed = _StreamedChecks(alpha=alpha, seed=seed, processes=processes)
    early = None
    if processes != 1 and _early_privacy.worth_starting(ledger_path):
        # the privacy accounting needs only per-step fields: start it now, on the other CPU
        early = _early_privacy.start(ledger_path, max_groups)
    try:
        return _audit_path(
            ledger_path, streamed, early, run_dir=run_dir, alpha=alpha,
            replay_steps=replay_steps, key=key, progress=progress, seed=seed,
            replay_seed=replay_seed, empirical_confidence=empirical_confidence, scores=scores,
            max_groups=max_groups,
        )  # fmt: skip
    finally:
        if early is not None:
            early.close()


def _audit_path(
    ledger_path: Path, streamed: Any, early: Any, *, run_dir: Path | None, alpha: float,
    replay_steps: int | None, key: Path | None, progress: bool, seed: int,
    replay_seed: int | None, empirical_confidence: float, scores: Any, max_groups: int | None,
) -> Certificate:  # fmt: skip
    """:func:`run_audit` after its arguments are checked: the one pass, then the checks."""
    from dpverify import ledger as ledger_api
    from dpverify.ledger.outline import read_outline

    ledger = None
    verify_report: Any
    try:
        # One streaming pass: read_outline verifies framing, checksums and the chain as it
        # reads, feeds every step's indices to the battery and the counts, and keeps only
        # an outline of the records (index arrays re-read on demand, e.g. by replay).
        ledger = read_outline(ledger_path, on_record=streamed.add)
    except LedgerCorrupt:
        streamed = None
        try:  # scan again, without raising, to say which record is bad
            verify_report = ledger_api.verify_ledger(ledger_path)
        except LedgerCorrupt as exc:  # e.g. the manifest is missing: nothing can be read
            verify_report = _ScanReport(
                ok=False, first_bad_record=exc.record_index, reason=str(exc)
            )
    else:
        verify_report = _ScanReport(
            ok=True,
            records=len(ledger.records),
            steps=len(ledger.steps),
            head=ledger.head,
            sealed=ledger.seal is not None,
            torn_tail_bytes=ledger.torn_tail_bytes,
        )
    return audit_ledger(
        ledger,
        verify_report=verify_report,
        run_dir=run_dir,
        alpha=alpha,
        replay_steps=replay_steps,
        noise_key_path=key,
        progress=progress,
        seed=seed,
        replay_seed=replay_seed,
        empirical_confidence=empirical_confidence,
        canary_scores_path=scores,
        _streamed=streamed,
        max_groups=max_groups,
        _epsilon_of=early.compute if early is not None else None,
    )
