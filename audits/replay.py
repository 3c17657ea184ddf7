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
        return CheckResult(name=_NAME, status="skip", reason="replay was not requested")
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
        diagnosis = _diagnose(run_dir, [o.step for o in bad], noise_key_path)
        if diagnosis:
            details["diagnosis"] = diagnosis
        return CheckResult(
            name=_NAME,
            status="fail",
            reason=(
                f"the masked trainer does not match the reference at {len(bad)} of "
                f"{_replayed(len(outcomes))}{': ' + diagnosis if diagnosis else ''}; "
                f"{where}"
            ),
            details=details,
        )
    return CheckResult(
        name=_NAME,
        status="pass",
        reason=(
            f"{_replayed(len(outcomes))} match the reference trainer "
            f"(largest relative deviation {worst.max_rel_deviation:.3g}, "
            f"within tolerance {worst.tolerance:.3g})"
        ),
        details=details,
    )


#: Failing steps the diagnosis recomputes (one reference pass each).
_DIAGNOSE_STEPS = 6


def _diagnose(run_dir: Path, steps: list[int], noise_key_path: Path | None) -> str | None:
    """Name the known bug a mismatch looks like, in plain words; ``None`` if none fits.

    The update sketch is linear in the update g = (S + σC·z)/D (S the clipped
    sum, z the step's noise), so one reference pass per failing step gives the
    sketch of every hypothesis: σ instead of σ·C is S/D + (g_ref − S/D)/C; the
    realised batch size L instead of D is g_ref·D/L (each must match within the
    replay tolerance at every diagnosed step).  Noise drawn once per physical
    batch leaves the clean part S/D plus k independent N(0, σ²C²) draws.  Each
    sketch component is a ±1 projection, so one draw's noise contributes
    exactly m·P·(σC/D)² in expectation to ‖sketch‖² (m components, P
    parameters): the ratio of ‖recorded − S/D‖², summed over the diagnosed
    steps, to that expectation is ≈ χ²_ν/ν (ν = m × steps) for a correct draw
    and ≈ k (the mean number of physical batches) for per-batch noise.  The
    bug is named when √k < ratio < 2k (k >= 1.5): with 6 steps × 8 components
    (ν = 48) and k = 3, a correct draw crosses √3 with probability ≈ 6·10⁻⁴
    and per-batch noise stays below it with probability ≈ 6·10⁻³; and it is
    only consulted after replay has already failed.  Informative only: any
    failure returns ``None``.  Uses ``trainers.replay``'s context loader (same
    data, model, checkpoints and noise key as the replay itself).
    """
    try:
        return _diagnose_unchecked(run_dir, steps[:_DIAGNOSE_STEPS], noise_key_path)
    except Exception:  # the diagnosis must never turn a refutation into a crash
        return None


def _diagnose_unchecked(run_dir: Path, steps: list[int], noise_key_path: Path | None) -> str | None:
    import math

    import jax
    import numpy as np

    from dpverify.ledger import read_ledger
    from trainers import replay as _tr
    from trainers.checkpoint import checkpoint_path, load_checkpoint
    from trainers.reference import reference_noisy_gradient
    from trainers.sketch import compare_sketches, update_sketch

    ledger = read_ledger(run_dir / "ledger")
    context, _why = _tr._load_context(run_dir, ledger, noise_key_path)
    if context is None:
        return None
    _plan, dataset, comps, prng, canary_split = context
    if canary_split is not None:  # runs with canaries: no diagnosis (the mismatch is reported)
        return None
    header = ledger.header
    precision = header.precision or "float32"
    ck = _tr._checkpoint_map(run_dir, ledger)
    sigma_ok, denom_ok, diagnosed = True, True, 0
    residual, expected, batches = 0.0, 0.0, []
    for s in steps:
        rec = ck.get(s)
        runs = [st for st in ledger.steps if st.step == s]
        if rec is None or not runs or runs[-1].update_sketch is None:
            continue
        run = runs[-1]
        state = load_checkpoint(
            run_dir / (rec.path or checkpoint_path(s)),
            params_template=comps.params,
            opt_state_template=comps.opt_state,
            expected_digest=rec.digest,
        )
        k = len(run.update_sketch or ())
        ref = reference_noisy_gradient(
            comps.model_apply,
            state.params,
            dataset.x_train,
            dataset.y_train,
            run.indices,
            clip_norm=header.clip_norm,
            noise_multiplier=header.noise_multiplier,
            denominator=header.denominator,
            noise_key=prng,
            step=s,
            sketch_dim=k,
        )
        recorded = np.asarray(run.update_sketch, dtype=np.float64)
        full = np.asarray(ref.update_sketch, dtype=np.float64)
        clean = np.asarray(update_sketch(ref.clipped_sum, k=k), dtype=np.float64)
        clean /= header.denominator
        size = max(int(run.indices.size), 1)

        def fits(candidate, recorded=recorded) -> bool:
            return compare_sketches(recorded, candidate, precision=precision).ok

        sigma_ok &= header.clip_norm != 1.0 and fits(clean + (full - clean) / header.clip_norm)
        denom_ok &= size != header.denominator and fits(full * header.denominator / size)
        residual += float(np.sum((recorded - clean) ** 2))
        n_params = sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(state.params))
        noise_std = header.noise_multiplier * header.clip_norm / header.denominator
        expected += k * n_params * noise_std**2
        batches.append(run.physical_batches or 1)
        diagnosed += 1
    if not diagnosed:
        return None
    if sigma_ok:
        return (
            f"the recorded updates match the reference with noise std σ = "
            f"{header.noise_multiplier:g} instead of σ·C = "
            f"{header.noise_multiplier * header.clip_norm:g}: noise not scaled by the clip norm?"
        )
    if denom_ok:
        return (
            "the recorded updates match the reference divided by the realised batch size L "
            f"instead of the declared denominator {header.denominator:g}: wrong denominator?"
        )
    mean_batches = float(np.mean(batches))
    if expected > 0 and mean_batches >= 1.5:
        ratio = residual / expected
        if math.sqrt(mean_batches) < ratio < 2.0 * mean_batches:
            return (
                f"the noise in the recorded updates has about {ratio:.2g} times the variance "
                f"of one draw, and steps ran in {mean_batches:.2g} physical batches on "
                "average: noise added per physical batch instead of once per step?"
            )
    return None


def _replayed(n: int) -> str:
    return f"{n} replayed step" if n == 1 else f"{n} replayed steps"
