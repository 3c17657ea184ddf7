"""The JAX segment replayer: checkpoint k → float64 reference → compare with checkpoint k′.

This is the public replay API of ``trainers`` (the auditor, ``audits.replay``,
uses only the names in ``__all__``; the seam is described in
:mod:`dpverify.replay`).  For each :class:`~dpverify.replay.Segment` of a run
written by the dpverify JAX trainers, :func:`replay_segments`

1. restores checkpoint k (its SHA-256 checked against the ledger),
2. runs :func:`trainers.reference.reference_step` — a float64 Python loop over
   the ledger's indices with the reference's own noise rule, clipping and
   denominator — for every step k … k′−1, with the step's C and σ (the
   header's when the step records none), the header's denominator q·N, the
   run's noise key and the recorded PRNG setting,
3. compares the parameters and optimiser state reached with checkpoint k′
   (also digest-checked): parameters by ‖θ_ref − θ_rec‖ / ‖θ_rec(k′) − θ_rec(k)‖
   (relative to how far the segment moved them), floating optimiser state by
   ‖s_ref − s_rec‖ / ‖s_rec‖, integer state (step counts) exactly; the
   largest must not exceed :func:`trainers.precision.replay_tolerance`.

What is compared is what was released: a trainer that logs a noisy update
sketch but applies a noiseless update, or reuses one noise draw over many
steps, reaches parameters the reference does not.  The self-reported update
sketch is used only by :func:`diagnose_segments`, to name a likely bug after a
mismatch, never to pass a segment.

Replay needs ``RUN_DIR/config.json`` (task and data path), the checkpoint
files, the noise key, the data and a PRNG setting this JAX can reproduce
(:func:`trainers.prng.replay_setting`); when one is missing the result is
*skipped* with the reason.

References: Abadi et al. 2016, arXiv:1607.00133, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpverify.errors import DpverifyError, UnusableInput
from dpverify.replay import Segment, SegmentOutcome, SegmentReplay

__all__ = [
    "ReplayContext",
    "compare_states",
    "diagnose_segments",
    "load_replay_context",
    "replay_segment",
    "replay_segments",
    "run_reference",
]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ReplayContext:
    """Everything a replay of a JAX run needs, loaded once.

    Attributes:
        run_dir: the run directory.
        header: the ledger's :class:`~dpverify.ledger.RunHeader`.
        dataset: the reloaded data set (fingerprint checked).
        components: model, optimiser and parameter/optimiser templates.
        noise_key: the run's noise key (raw key data of the recorded PRNG).
        threefry_partitionable: the recorded PRNG flag.
        precision: the recorded precision.
        tolerance: relative tolerance of a segment (:func:`trainers.precision.replay_tolerance`).
        canary_split: ``None``, or for a run trained with canaries
            ``split(indices) -> (real indices, extra_sum)``: slots ≥ N₀ are
            canaries, whose clipped sum the reference adds before the noise
            (built from the committed canary key by :mod:`trainers.canaries`).
    """

    run_dir: Path
    header: Any
    dataset: Any
    components: Any
    noise_key: Any
    threefry_partitionable: bool
    precision: str
    tolerance: float
    canary_split: Any = None

    def restore(self, step: int, digest: str, path: str | None) -> Any:
        """Checkpoint ``step`` (:class:`trainers.checkpoint.CheckpointState`), digest-checked.

        Raises:
            UnusableInput: missing, unreadable or not matching ``digest``.
        """
        from trainers.checkpoint import checkpoint_path, load_checkpoint

        return load_checkpoint(
            self.run_dir / (path or checkpoint_path(step)),
            params_template=self.components.params,
            opt_state_template=self.components.opt_state,
            expected_digest=digest,
        )

    def step_kwargs(self, step: Any) -> dict[str, Any]:
        """Keyword arguments of :func:`trainers.reference.reference_step` for a Step record."""
        h = self.header
        return {
            "clip_norm": step.clip_norm if step.clip_norm is not None else h.clip_norm,
            "noise_multiplier": (
                step.noise_multiplier if step.noise_multiplier is not None else h.noise_multiplier
            ),
            "denominator": h.denominator,
            "noise_key": self.noise_key,
            "step": step.step,
            "threefry_partitionable": self.threefry_partitionable,
        }


def load_replay_context(
    run_dir: str | Path, ledger: Any, noise_key_path: str | Path | None = None
) -> tuple[ReplayContext | None, str | None]:
    """``(context, None)``, or ``(None, reason)`` when replay cannot run."""
    from trainers.components import build_components
    from trainers.noise_key import load_noise_key, noise_prng_key
    from trainers.precision import replay_tolerance
    from trainers.prng import replay_setting
    from trainers.run_plan import RunPlan
    from trainers.session import load_dataset

    rd = Path(run_dir)
    header = ledger.header
    framework = dict(header.extra or {}).get("framework", "jax")
    if framework != "jax":
        return None, f"a {framework!r} run is not replayed by the JAX reference"
    setting, why = replay_setting(header.extra)
    if setting is None:
        return None, f"{why}: replay under another setting could refute an honest run"
    cfg_path = rd / "config.json"
    if not cfg_path.is_file():
        return None, f"{cfg_path} is missing: the model and data cannot be rebuilt"
    try:
        plan = RunPlan.from_json(json.loads(cfg_path.read_text()))
    except (ValueError, DpverifyError) as exc:
        return None, f"{cfg_path} is unusable: {exc}"
    key_path = Path(noise_key_path) if noise_key_path is not None else rd / "noise.key"
    if not key_path.exists():
        return None, f"no noise key at {key_path} (the auditor needs it for replay)"
    try:
        key = load_noise_key(key_path, expected_digest=header.noise_key_digest)
        dataset = load_dataset(plan.task, plan.data_path)
    except DpverifyError as exc:
        return None, str(exc)
    if header.dataset_fingerprint and dataset.fingerprint != header.dataset_fingerprint:
        return None, "the reloaded data set does not match the ledger's dataset_fingerprint"
    precision = header.precision or "float32"
    comps = build_components(plan, dataset, 0)  # templates: values are restored
    split, why = _canary_split(rd, header, plan, comps.params)
    if why is not None:
        return None, why
    return (
        ReplayContext(
            run_dir=rd,
            header=header,
            dataset=dataset,
            components=comps,
            noise_key=np.asarray(noise_prng_key(key)),
            threefry_partitionable=setting["threefry_partitionable"],
            precision=precision,
            tolerance=replay_tolerance(precision),
            canary_split=split,
        ),
        None,
    )


def _canary_split(run_dir: Path, header: Any, plan: Any, template: Any) -> tuple[Any, str | None]:
    """For a run with canaries: ``split(indices) -> (real, extra_sum)`` (or why not)."""
    if not getattr(plan, "canaries", 0):
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


def _floats(tree: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(floating leaves, other leaves) of a pytree, as float64 / exact NumPy arrays."""
    import jax

    fl, other = [], []
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating):
            fl.append(a.astype(np.float64).ravel())
        else:
            other.append(a.ravel())
    return fl, other


def _norm(parts: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(p * p)) for p in parts))


def compare_states(
    ref_params: Any, ref_opt: Any, start_params: Any, end_params: Any, end_opt: Any
) -> tuple[float, float]:
    """``(relative deviation, max absolute deviation)`` of a replayed segment's end state.

    Parameters: ‖θ_ref − θ_rec‖ / ‖θ_rec(end) − θ_rec(start)‖; floating
    optimiser state: ‖s_ref − s_rec‖ / ‖s_rec‖; integer optimiser state must be
    equal (else the deviation is infinite).  Non-finite values give ``inf``.
    """
    pr, _ = _floats(ref_params)
    pe, _ = _floats(end_params)
    p0, _ = _floats(start_params)
    moved = _norm([e - s for e, s in zip(pe, p0, strict=True)])
    diff = [r - e for r, e in zip(pr, pe, strict=True)]
    rel = _norm(diff) / max(moved, 1e-300)
    abs_dev = max((float(np.max(np.abs(d))) for d in diff if d.size), default=0.0)
    sr, ir = _floats(ref_opt)
    se, ie = _floats(end_opt)
    if len(sr) != len(se) or len(ir) != len(ie):
        return math.inf, math.inf
    if any(not np.array_equal(a, b) for a, b in zip(ir, ie, strict=True)):
        return math.inf, math.inf
    sdiff = [r - e for r, e in zip(sr, se, strict=True)]
    if sdiff:
        rel = max(rel, _norm(sdiff) / max(_norm(se), 1e-300))
        abs_dev = max(abs_dev, max((float(np.max(np.abs(d))) for d in sdiff if d.size), default=0))
    if not (math.isfinite(rel) and math.isfinite(abs_dev)):
        return math.inf, math.inf
    return rel, abs_dev


def run_reference(
    ctx: ReplayContext, segment: Segment, params: Any, opt_state: Any, **overrides: Any
) -> tuple[Any, Any]:
    """The float64 reference over every step of ``segment`` from ``(params, opt_state)``.

    ``overrides`` replace :meth:`ReplayContext.step_kwargs` entries (used by
    the diagnosis to replay a hypothesis, e.g. ``noise_multiplier=0``).
    """
    from trainers.reference import reference_step

    comps, data = ctx.components, ctx.dataset
    for rec in segment.steps:
        kwargs = {**ctx.step_kwargs(rec), **overrides}
        indices = rec.indices
        if ctx.canary_split is not None:  # canary slots ≥ N₀ become a clipped extra sum
            indices, kwargs["extra_sum"] = ctx.canary_split(rec.indices)
        params, opt_state, _ = reference_step(
            comps.model_apply,
            comps.optimizer,
            params,
            opt_state,
            data.x_train,
            data.y_train,
            indices,
            **kwargs,
        )
    return params, opt_state


def replay_segment(ctx: ReplayContext, segment: Segment) -> SegmentOutcome:
    """Replay one segment and compare with its end checkpoint (see the module docstring)."""
    where = f"steps {segment.start}–{segment.end - 1}"
    try:
        start = ctx.restore(segment.start, segment.start_digest, segment.start_path)
        end = ctx.restore(segment.end, segment.end_digest, segment.end_path)
    except UnusableInput as exc:
        return _outcome(segment, math.inf, math.inf, ctx.tolerance, f"{where}: {exc}")
    ref_params, ref_opt = run_reference(ctx, segment, start.params, start.opt_state)
    rel, dev = compare_states(ref_params, ref_opt, start.params, end.params, end.opt_state)
    ok = rel <= ctx.tolerance
    if ok:
        reason = (
            f"{where}: the float64 reference reaches the released checkpoint {segment.end} "
            f"(relative deviation {rel:.2g} <= {ctx.tolerance:.2g})"
        )
    else:
        reason = (
            f"{where}: the released checkpoint {segment.end} differs from the float64 reference "
            f"by {rel:.3g} of the segment's update (tolerance {ctx.tolerance:.2g}; largest "
            f"component deviation {dev:.3g})"
        )
    return _outcome(segment, rel, dev, ctx.tolerance, reason, ok=ok)


def _outcome(
    segment: Segment, rel: float, dev: float, tol: float, reason: str, *, ok: bool = False
) -> SegmentOutcome:
    return SegmentOutcome(
        start=segment.start,
        end=segment.end,
        ok=ok,
        rel_deviation=rel,
        max_abs_deviation=dev,
        tolerance=tol,
        reason=reason,
    )


def replay_segments(
    run_dir: str | Path,
    ledger: Any,
    segments: Sequence[Segment],
    *,
    noise_key_path: str | Path | None = None,
    diagnose: bool = True,
) -> SegmentReplay:
    """Replay ``segments`` of a JAX run (the JAX segment replayer of :mod:`dpverify.replay`).

    Args:
        run_dir: the run directory.
        ledger: its read :class:`~dpverify.ledger.Ledger`.
        segments: the segments to replay (from :func:`dpverify.replay.checkpoint_segments`).
        noise_key_path: the noise key file (default ``RUN_DIR/noise.key``).
        diagnose: name the likely bug of the first mismatching segment
            (:func:`diagnose_segments`).

    Returns:
        :class:`~dpverify.replay.SegmentReplay`: one outcome per segment, or
        ``skipped_reason``.
    """
    ctx, why = load_replay_context(run_dir, ledger, noise_key_path)
    if ctx is None:
        return SegmentReplay(skipped_reason=why)
    outcomes = [replay_segment(ctx, seg) for seg in segments]
    if diagnose and ctx.canary_split is None:  # canary runs: the mismatch is reported as is
        failed = [
            (i, s)
            for i, (s, o) in enumerate(zip(segments, outcomes, strict=True))
            if not o.ok and math.isfinite(o.rel_deviation)
        ]
        if failed:
            failed.sort(key=lambda item: item[1].num_steps)
            words = diagnose_segments(ctx, [s for _, s in failed], ledger)
            if words:
                i = failed[0][0]
                outcomes[i] = dataclasses.replace(outcomes[i], diagnosis=words)
    return SegmentReplay(outcomes=tuple(outcomes))


def diagnose_segments(ctx: ReplayContext, segments: Sequence[Segment], ledger: Any) -> str | None:
    """Name the bug mismatching segments (shortest first) look like, in plain words.

    ``None`` if no known bug fits.  See :mod:`trainers.replay_diagnosis`.
    Informative only: never raises.
    """
    from trainers.replay_diagnosis import diagnose

    try:
        return diagnose(ctx, segments, ledger)
    except Exception:  # the diagnosis must never turn a refutation into a crash
        return None
