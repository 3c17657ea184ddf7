"""Replay check: released parameters recomputed by an independent reference.

What is replayed is what the run *released*: a checkpoint segment k → k′
(:mod:`dpverify.replay`) is replayed by restoring checkpoint k, running an
independent float64 reference of the DP-SGD step for every step up to k′ from
the ledger's indices and the run's noise key, and comparing the parameters and
optimiser state reached with checkpoint k′, within the tolerance of the
recorded precision.  A trainer whose mechanics are wrong — padding not
masked, noise per physical batch, σ instead of σ·C, clipping after summation
or at a larger norm than recorded, a wrong denominator, noise reused across
steps, noise not applied to the update — released parameters the reference
does not reach.  The trainer's self-reported update sketch only helps name
the bug; it never vouches for a segment.

Which segments (this module's job; the auditor decides, not the trainer):

* always the **final** segment (it ends at the released model);
* every segment **touching a resume** (starting at a checkpoint a resume
  restored, or ending at one);
* then whole segments drawn at random, with the auditor's own seed (printed
  in the reason and the certificate, so anyone can redo the same choice),
  while they fit in the budget of ``budget`` steps.

The budget is in steps, whole segments only; the final and resume segments
are replayed even beyond it.  The reason states the coverage, e.g. "replayed
75 of 150 steps in 3 segments, including the final parameters".

Which replayer: the per-framework work is a *segment replayer* selected by
the ledger header's ``extra["framework"]`` (absent means ``"jax"``) from
:data:`REPLAYERS` and imported lazily (the seam is specified in
:mod:`dpverify.replay`).  To plug in a framework, add its module to
:data:`REPLAYERS`; the module must define ``replay_segments(run_dir, ledger,
segments, *, noise_key_path=None)``.

Replay needs checkpoints, the data and the noise key: without them (e.g. a run
imported from JSON Lines) the check is skipped with the reason, and the
certificate's scope says clipping and noise were NOT verified.
"""

from __future__ import annotations

import importlib
import math
import secrets
from pathlib import Path
from typing import Any

from audits.check import CheckResult
from dpverify.errors import DpverifyError

__all__ = ["DEFAULT_REPLAY_STEPS", "REPLAYERS", "check_replay", "choose_segments"]

_NAME = "replay"

#: Default replay budget in steps (``dpverify demo`` replays 50 of its 150 steps).
DEFAULT_REPLAY_STEPS = 50

#: Framework (``RunHeader.extra["framework"]``) → module defining ``replay_segments``.
REPLAYERS: dict[str, str] = {
    "jax": "trainers.replay",
    "opacus": "dpverify.integrations.opacus.replay",
}


def choose_segments(segments: Any, budget: int, seed: int) -> list[Any]:
    """The segments to replay, in ledger order (rules in the module docstring)."""
    import numpy as np

    must = [i for i, s in enumerate(segments) if s.final or s.touches_resume]
    others = [i for i in range(len(segments)) if i not in set(must)]
    used = sum(segments[i].num_steps for i in must)
    chosen = set(must)
    for j in np.random.default_rng(seed).permutation(len(others)):
        i = others[int(j)]
        if used + segments[i].num_steps <= budget:
            chosen.add(i)
            used += segments[i].num_steps
    return [segments[i] for i in sorted(chosen)]


def _replayer(framework: str) -> tuple[Any, str | None]:
    name = REPLAYERS.get(framework)
    if name is None:
        known = ", ".join(sorted(REPLAYERS))
        return None, f"no segment replayer for framework {framework!r} (known: {known})"
    try:
        return importlib.import_module(name).replay_segments, None
    except ImportError as exc:
        return None, f"the {framework} segment replayer is not available ({exc})"


def check_replay(
    run_dir: Path | None,
    *,
    ledger: Any = None,
    budget: int | None = DEFAULT_REPLAY_STEPS,
    seed: int | None = None,
    noise_key_path: Path | None = None,
) -> CheckResult:
    """Replay whole checkpoint segments and compare with the released checkpoints.

    Args:
        run_dir: the run directory (holding ``ledger/``, ``checkpoints/``,
            ``noise.key``, ...), or ``None`` when only a bare ledger is available.
        ledger: the read ledger (read from ``run_dir`` when ``None``).
        budget: replay budget in steps; ``None`` disables replay.
        seed: the auditor's seed of the random choice of segments; ``None``
            draws a fresh one from the OS (so the trainer cannot predict it).
            It is stated in the reason and ``details["seed"]``.
        noise_key_path: the noise key file, if not ``RUN_DIR/noise.key``.

    Returns:
        ``fail`` naming the first mismatching segment, the deviation and the
        likely bug; ``skip`` with the reason when replay is disabled or
        impossible; ``warn`` when the segments replayed match but the final
        parameters could not be covered; else ``pass``.  ``details`` holds the
        coverage (``steps_replayed``, ``steps_executed``, ``segments``,
        ``includes_final_parameters``, ``seed``, ``budget``) and every outcome.
    """
    if budget is None:
        return CheckResult(name=_NAME, status="skip", reason="replay was not requested")
    if run_dir is None:
        return CheckResult(
            name=_NAME,
            status="skip",
            reason="a bare ledger without its run directory: no checkpoints, data or noise key",
        )
    from dpverify.replay import checkpoint_segments

    if ledger is None:
        from dpverify.ledger import read_ledger

        try:
            ledger = read_ledger(Path(run_dir) / "ledger")
        except DpverifyError as exc:
            return CheckResult(
                name=_NAME, status="skip", reason=f"the ledger cannot be read: {exc}"
            )
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    segments, notes = checkpoint_segments(ledger)
    executed = len(ledger.steps)
    details: dict[str, Any] = {"seed": seed, "budget": int(budget), "steps_executed": executed}
    if notes:
        details["notes"] = notes
    if not segments:
        return CheckResult(
            name=_NAME,
            status="skip",
            reason="no checkpoint segments to replay (the ledger records fewer than two "
            "checkpoints with steps between them)",
            details=details,
        )
    framework = str(dict(ledger.header.extra or {}).get("framework", "jax"))
    replay_segments, why = _replayer(framework)
    if replay_segments is None:
        return CheckResult(
            name=_NAME, status="skip", reason=why or "no segment replayer", details=details
        )
    chosen = choose_segments(segments, int(budget), seed)
    try:
        result = replay_segments(Path(run_dir), ledger, chosen, noise_key_path=noise_key_path)
    except DpverifyError as exc:
        return CheckResult(
            name=_NAME, status="skip", reason=f"replay cannot run: {exc}", details=details
        )
    if result.skipped_reason:
        return CheckResult(name=_NAME, status="skip", reason=result.skipped_reason, details=details)
    outcomes = list(result.outcomes)
    steps_replayed = sum(len(s.steps) for s in chosen)
    final = any(s.final for s in chosen)
    over = sum(s.num_steps for s in chosen) > budget
    details.update(
        framework=framework,
        steps_replayed=steps_replayed,
        segments=len(chosen),
        includes_final_parameters=final,
        segments_replayed=[[s.start, s.end] for s in chosen],
        outcomes=[_outcome_dict(o) for o in outcomes],
    )
    coverage = (
        f"replayed {steps_replayed} of {executed} steps in {len(chosen)} "
        f"segment{'s' if len(chosen) != 1 else ''}, "
        + ("including the final parameters" if final else "NOT including the final parameters")
        + f" (auditor's seed {seed}"
        + ("; the final and resume segments exceed the budget" if over else "")
        + ")"
    )
    details["coverage"] = coverage
    bad = [o for o in outcomes if not o.ok]
    if bad:
        first = next((o for o in bad if getattr(o, "diagnosis", None)), bad[0])
        diagnosis = getattr(first, "diagnosis", None)
        if diagnosis:
            details["diagnosis"] = diagnosis
        what = getattr(first, "reason", "") or (
            f"steps {first.start}–{first.end - 1} deviate by {first.rel_deviation:.3g} "
            f"(tolerance {first.tolerance:.3g})"
        )
        return CheckResult(
            name=_NAME,
            status="fail",
            reason=(
                f"the released parameters do not match the reference in {len(bad)} of "
                f"{len(outcomes)} replayed segments"
                f"{': ' + diagnosis if diagnosis else ''}; {what}; {coverage}"
            ),
            details=details,
        )
    worst = max(outcomes, key=lambda o: o.rel_deviation)
    details["max_rel_deviation"] = worst.rel_deviation
    text = (
        f"{coverage}; the reference reaches every released checkpoint "
        f"(largest relative deviation {worst.rel_deviation:.2g}, tolerance {worst.tolerance:.2g})"
    )
    if not final:
        return CheckResult(
            name=_NAME,
            status="warn",
            reason=f"{text}; the final parameters were never checkpointed, so the released "
            "model is not covered",
            details=details,
        )
    return CheckResult(name=_NAME, status="pass", reason=text, details=details)


def _outcome_dict(o: Any) -> dict[str, Any]:
    def num(v: Any) -> float | None:
        v = float(v)
        return v if math.isfinite(v) else None

    return {
        "start": int(o.start),
        "end": int(o.end),
        "ok": bool(o.ok),
        "rel_deviation": num(o.rel_deviation),
        "max_abs_deviation": num(o.max_abs_deviation),
        "tolerance": float(o.tolerance),
    }
