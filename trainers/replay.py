"""Replay recorded steps through the float64 reference trainer (for the auditor).

For a logical step s that has a checkpoint right before it (the parameters
after s steps), replay

1. restores checkpoint s and checks its SHA-256 against the ledger's
   :class:`~dpverify.ledger.Checkpoint` record,
2. recomputes step s's noisy averaged gradient with
   :func:`trainers.reference.reference_noisy_gradient` — a plain float64 loop
   over the ledger's indices for s, the run's noise key, and the header's C, σ
   and denominator q·N (what the accountant assumes, not what the trainer says),
3. compares its update sketch (:mod:`trainers.sketch`) with the ``update_sketch``
   of every ledger execution of step s, relative to the sketch's scale, within
   the tolerance of the run's precision (:func:`trainers.precision.sketch_tolerance`).

A masked trainer with a bug in its mechanics (padding not masked, noise per
physical batch, noise σ instead of σC, clipping after summation, wrong
denominator) records a sketch the reference does not reproduce.

Which steps: every replayable step at a resume point (where a restart could
have gone wrong) plus a seeded random sample of the other replayable steps.
Replay needs the run directory's ``config.json`` (task and data path), the
checkpoint files, the noise key and the data; when one is missing the report
says so in ``skipped_reason`` instead of passing or failing.

References: docs/masked-dpsgd.md ("Reference trainer") and docs/certificate.md (the replay check).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dpverify.errors import DpverifyError, InvalidArgument, UnusableInput

__all__ = ["ReplayOutcome", "ReplayReport", "replay_steps", "replayable_steps"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplayOutcome:
    """Replay of one logical step.

    Attributes:
        step: the logical step index.
        max_abs_deviation: largest |recorded − reference| sketch component
            (over every execution of the step).
        max_rel_deviation: that deviation relative to the reference sketch's
            scale (≈ the norm of the noisy averaged gradient).
        tolerance: relative tolerance of the run's precision.
        ok: the recorded update matches the reference within tolerance.
        reason: one line in plain words naming the step and the deviation.
    """

    step: int
    max_abs_deviation: float
    max_rel_deviation: float
    tolerance: float
    ok: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (non-finite numbers become ``None``)."""
        out = dataclasses.asdict(self)
        for k in ("max_abs_deviation", "max_rel_deviation"):
            if not math.isfinite(out[k]):
                out[k] = None
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplayReport:
    """Outcomes of a replay, or why it could not run.

    Attributes:
        outcomes: one :class:`ReplayOutcome` per replayed step, by step.
        skipped_reason: ``None`` when replay ran; otherwise why it could not
            (missing noise key, checkpoints, data, ...).
    """

    outcomes: tuple[ReplayOutcome, ...]
    skipped_reason: str | None = None

    @property
    def ok(self) -> bool:
        """Replay ran, replayed at least one step, and every step matched."""
        return (
            self.skipped_reason is None and bool(self.outcomes) and all(o.ok for o in self.outcomes)
        )

    @property
    def failures(self) -> tuple[ReplayOutcome, ...]:
        """Outcomes that did not match."""
        return tuple(o for o in self.outcomes if not o.ok)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "ok": self.ok,
            "skipped_reason": self.skipped_reason,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


def _run_dir_of(path: str | Path) -> Path:
    """The run directory for a run dir or its ``ledger/`` dir."""
    p = Path(path)
    if (p / "ledger").is_dir():
        return p
    if p.name == "ledger" and p.is_dir():
        return p.parent
    raise UnusableInput(f"{p} is not a run directory (no ledger/ inside)")


def _checkpoint_map(run_dir: Path, ledger: Any) -> dict[int, Any]:
    """Logical step → its latest Checkpoint record whose file exists."""
    from trainers.checkpoint import checkpoint_path

    out: dict[int, Any] = {}
    for rec in ledger.checkpoints:
        if (run_dir / (rec.path or checkpoint_path(rec.step))).is_file():
            out[rec.step] = rec
    return out


def replayable_steps(run_dir: str | Path) -> tuple[int, ...]:
    """Executed logical steps that have a checkpoint file right before them."""
    from dpverify.ledger import read_ledger

    rd = _run_dir_of(run_dir)
    ledger = read_ledger(rd / "ledger")
    executed = {s.step for s in ledger.steps}
    return tuple(sorted(executed & set(_checkpoint_map(rd, ledger))))


def _choose(
    candidates: list[int],
    resume_points: set[int],
    steps: Iterable[int] | None,
    sample: int,
    seed: int,
) -> list[int]:
    if steps is not None:
        chosen = sorted({int(s) for s in steps})
        missing = [s for s in chosen if s not in candidates]
        if missing:
            raise InvalidArgument(
                f"steps={missing[:5]!r} cannot be replayed: no checkpoint right before them"
            )
        return chosen
    must = sorted(resume_points & set(candidates))
    others = [s for s in candidates if s not in resume_points]
    k = min(max(int(sample), 0), len(others))
    picks = np.random.default_rng(seed).choice(len(others), size=k, replace=False) if k else ()
    return sorted(set(must) | {others[int(i)] for i in picks})


def _load_context(run_dir: Path, ledger: Any, noise_key_path: Any) -> tuple[Any, str | None]:
    """(plan, dataset, components, noise prng key) or a reason replay cannot run."""
    from trainers.components import build_components
    from trainers.noise_key import load_noise_key, noise_prng_key
    from trainers.run_plan import RunPlan
    from trainers.session import load_dataset

    header = ledger.header
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        return None, f"{cfg_path} is missing: the model and data cannot be rebuilt"
    try:
        plan = RunPlan.from_json(json.loads(cfg_path.read_text()))
    except (ValueError, DpverifyError) as exc:
        return None, f"{cfg_path} is unusable: {exc}"
    key_path = Path(noise_key_path) if noise_key_path is not None else run_dir / "noise.key"
    if not key_path.exists():
        return None, f"no noise key at {key_path} (the auditor needs it for replay)"
    try:
        key = load_noise_key(key_path, expected_digest=header.noise_key_digest)
        dataset = load_dataset(plan.task, plan.data_path)
    except DpverifyError as exc:
        return None, str(exc)
    if header.dataset_fingerprint and dataset.fingerprint != header.dataset_fingerprint:
        return None, "the reloaded data set does not match the ledger's dataset_fingerprint"
    comps = build_components(plan, dataset, 0)  # templates only: values are restored
    split, why = _canary_split(run_dir, header, plan, comps.params)
    if why is not None:
        return None, why
    return (plan, dataset, comps, noise_prng_key(key), split), None


def _canary_split(run_dir: Path, header: Any, plan: Any, template: Any) -> tuple[Any, str | None]:
    """For a run with canaries: ``split(indices) -> (real, extra_sum)`` (or why not)."""
    if not plan.canaries:
        return None, None
    from dpverify.empirical.canaries import canary_key_digest
    from trainers.canaries import reference_canaries

    try:
        private = json.loads((run_dir / "private.json").read_text())
        key = bytes.fromhex(str(private["canaries"]["key"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None, (
            f"the run has {plan.canaries} canaries and their key (private.json) is not "
            "available: replay needs it to add the sampled canaries"
        )
    if canary_key_digest(key) != dict(header.extra or {}).get("canary_key_digest"):
        return None, "the canary key does not match the ledger header's canary_key_digest"
    split = reference_canaries(
        private,
        template,
        dataset_size=plan.dataset_size,
        count=plan.canaries,
        clip_norm=plan.clip_norm,
    )
    return split, None


def replay_steps(
    run_dir: str | Path,
    *,
    steps: Iterable[int] | None = None,
    sample: int = 5,
    seed: int = 0,
    noise_key_path: str | Path | None = None,
) -> ReplayReport:
    """Replay steps of a run through the reference trainer and compare sketches.

    Args:
        run_dir: the run directory (or its ``ledger/`` directory).
        steps: the steps to replay; default: every replayable resume point
            plus ``sample`` other replayable steps drawn with ``seed``.
        sample: how many non-resume steps to draw.
        seed: seed of that draw (public: it only picks which steps to check).
        noise_key_path: the noise key file (default ``RUN_DIR/noise.key``).

    Returns:
        :class:`ReplayReport`; ``skipped_reason`` says why nothing was replayed.

    Raises:
        UnusableInput: ``run_dir`` is not a run directory.
        InvalidArgument: an explicitly requested step is not replayable.
    """
    from dpverify.ledger import read_ledger
    from trainers.checkpoint import checkpoint_path, load_checkpoint
    from trainers.precision import sketch_tolerance

    rd = _run_dir_of(run_dir)
    try:
        ledger = read_ledger(rd / "ledger")
    except DpverifyError as exc:
        return ReplayReport(outcomes=(), skipped_reason=f"the ledger cannot be read: {exc}")
    ck = _checkpoint_map(rd, ledger)
    executed = {s.step for s in ledger.steps}
    candidates = sorted(executed & set(ck))
    if not candidates:
        return ReplayReport(outcomes=(), skipped_reason="no checkpoint files to replay from")
    chosen = _choose(candidates, {r.step for r in ledger.resumes}, steps, sample, seed)
    context, why = _load_context(rd, ledger, noise_key_path)
    if context is None:
        return ReplayReport(outcomes=(), skipped_reason=why)
    _plan, dataset, comps, prng, split = context
    header = ledger.header
    precision = header.precision or "float32"
    tol = sketch_tolerance(precision)
    outcomes = []
    for s in chosen:
        rec = ck[s]
        try:
            state = load_checkpoint(
                rd / (rec.path or checkpoint_path(s)),
                params_template=comps.params,
                opt_state_template=comps.opt_state,
                expected_digest=rec.digest,
            )
        except UnusableInput as exc:
            outcomes.append(_outcome(s, math.inf, math.inf, tol, f"step {s}: {exc}"))
            continue
        runs = [st for st in ledger.steps if st.step == s]
        outcomes.append(
            _replay_one(s, runs, state.params, comps, dataset, header, prng, precision, tol, split)
        )
    return ReplayReport(outcomes=tuple(outcomes))


def _outcome(step: int, dev: float, rel: float, tol: float, reason: str) -> ReplayOutcome:
    return ReplayOutcome(
        step=step,
        max_abs_deviation=dev,
        max_rel_deviation=rel,
        tolerance=tol,
        ok=False,
        reason=reason,
    )


def _replay_one(
    s: int,
    runs: list,
    params: Any,
    comps: Any,
    dataset: Any,
    header: Any,
    prng: Any,
    precision: str,
    tol: float,
    split: Any = None,
) -> ReplayOutcome:
    from trainers.reference import reference_noisy_gradient
    from trainers.sketch import compare_sketches

    worst_abs, worst_rel, ok = 0.0, 0.0, True
    cache: dict[bytes, Any] = {}
    for run in runs:
        if run.update_sketch is None:
            return _outcome(s, math.inf, math.inf, tol, f"step {s}: no update_sketch recorded")
        key = run.indices.tobytes()
        if key not in cache:
            # Canary runs: slots ≥ N₀ are canaries, added as a clipped sum (trainers.canaries).
            indices, extra = (run.indices, None) if split is None else split(run.indices)
            cache[key] = reference_noisy_gradient(
                comps.model_apply,
                params,
                dataset.x_train,
                dataset.y_train,
                indices,
                clip_norm=header.clip_norm,
                noise_multiplier=header.noise_multiplier,
                denominator=header.denominator,
                noise_key=prng,
                step=s,
                sketch_dim=len(run.update_sketch),
                extra_sum=extra,
            )
        cmp = compare_sketches(run.update_sketch, cache[key].update_sketch, precision=precision)
        ok = ok and cmp.ok
        if not cmp.max_abs_deviation <= worst_abs:
            worst_abs = cmp.max_abs_deviation
        if not cmp.max_rel_deviation <= worst_rel:
            worst_rel = cmp.max_rel_deviation
    times = "" if len(runs) == 1 else f" (all {len(runs)} executions)"
    if ok:
        reason = (
            f"step {s}: the recorded update matches the float64 reference{times} "
            f"(relative deviation {worst_rel:.2g} <= {tol:.2g})"
        )
    else:
        reason = (
            f"step {s}: the recorded update differs from the float64 reference by "
            f"{worst_rel:.3g} of its scale (tolerance {tol:.2g}; largest component "
            f"deviation {worst_abs:.3g})"
        )
    return ReplayOutcome(
        step=s,
        max_abs_deviation=worst_abs,
        max_rel_deviation=worst_rel,
        tolerance=tol,
        ok=ok,
        reason=reason,
    )
