"""Replay check: recorded steps recomputed by the slow reference trainer.

For a random sample of recorded steps (plus every step next to a resume),
:func:`trainers.replay.replay_steps` restores the checkpoint before the step,
recomputes the noisy update with the reference trainer (a float64 Python loop
over the ledger's indices, no masking, no padding) using the run's noise key,
and compares it with what the masked trainer recorded, within a tolerance set
by the recorded precision.  This is what catches bugs the ledger's own numbers
cannot show (padding not masked, noise per physical batch, σ instead of σ·C,
clipping after summation, a wrong denominator).

Replay needs checkpoints, the data and the noise key: without them (e.g. a run
imported from JSON Lines) the check is skipped with the reason.  JAX is only
imported here, inside the function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audits.check import CheckResult
from dpverify.errors import DpverifyError

__all__ = ["check_replay"]

_NAME = "replay"


def check_replay(
    run_dir: Path | None,
    *,
    sample: int | None = 5,
    seed: int = 0,
    noise_key_path: Path | None = None,
) -> CheckResult:
    """Replay a sample of steps and compare them with the reference trainer.

    Args:
        run_dir: the run directory (holding ``ledger/``, ``checkpoints/``,
            ``noise.key``, ``config.json``), or ``None`` when only a bare
            ledger is available.
        sample: number of randomly chosen steps to replay (steps next to a
            resume are always added); ``None`` disables replay.
        seed: seed of the random choice of steps.
        noise_key_path: the noise key file, if not ``RUN_DIR/noise.key``.

    Returns:
        ``fail`` naming the first mismatching step and the largest deviation;
        ``skip`` with the reason when replay is disabled or impossible;
        else ``pass``.
    """
    if sample is None:
        return CheckResult(name=_NAME, status="skip", reason="replay disabled (--no-replay)")
    if run_dir is None:
        return CheckResult(
            name=_NAME,
            status="skip",
            reason="a bare ledger without its run directory: no checkpoints, data or noise key",
        )
    try:
        from trainers.replay import replay_steps
    except ImportError as exc:  # pragma: no cover - trainers are part of the package
        return CheckResult(
            name=_NAME, status="skip", reason=f"the reference trainer is not available ({exc})"
        )
    try:
        report = replay_steps(
            run_dir, steps=None, sample=sample, seed=seed, noise_key_path=noise_key_path
        )
    except DpverifyError as exc:
        return CheckResult(name=_NAME, status="skip", reason=f"replay cannot run: {exc}")
    if report.skipped_reason:
        return CheckResult(name=_NAME, status="skip", reason=report.skipped_reason)
    outcomes = tuple(report.outcomes)
    details: dict[str, Any] = {
        "replayed": [o.step for o in outcomes],
        "outcomes": [
            {
                "step": o.step,
                "max_abs_deviation": o.max_abs_deviation,
                "max_rel_deviation": o.max_rel_deviation,
                "tolerance": o.tolerance,
                "ok": bool(o.ok),
            }
            for o in outcomes
        ],
    }
    if not outcomes:
        return CheckResult(
            name=_NAME, status="skip", reason="no step could be replayed", details=details
        )
    bad = [o for o in outcomes if not o.ok]
    worst = max(outcomes, key=lambda o: o.max_rel_deviation)
    details["max_rel_deviation"] = worst.max_rel_deviation
    if bad:
        first = bad[0]
        where = first.reason or (
            f"step {first.step} deviates by {first.max_rel_deviation:.3g} of its scale "
            f"(tolerance {first.tolerance:.3g})"
        )
        return CheckResult(
            name=_NAME,
            status="fail",
            reason=(
                f"the masked trainer does not match the reference at {len(bad)} of "
                f"{len(outcomes)} replayed steps; {where}"
            ),
            details=details,
        )
    return CheckResult(
        name=_NAME,
        status="pass",
        reason=(
            f"{len(outcomes)} replayed steps match the reference trainer "
            f"(largest relative deviation {worst.max_rel_deviation:.3g}, "
            f"within tolerance {worst.tolerance:.3g})"
        ),
        details=details,
    )
