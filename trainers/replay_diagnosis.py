"""Naming the bug behind a replay mismatch, in plain words (informative only).

Replay has already refuted the run (the released parameters are not what the
reference reaches); this module only tries to say *why*.  It may use the
trainer's self-reported update sketches (k Rademacher projections of each
step's noisy averaged gradient, :mod:`trainers.sketch`), which never vouch for
anything on their own.  The sketch is linear, so with the reference's clipped
sum S, its noise z_t and denominator D, the sketch of any hypothesis is a
cheap combination of sketches.

1. **Walk the segment.**  From checkpoint k, the reference steps forward;
   at each step its sketch is compared with the recorded one.  The first step
   t* whose recorded sketch differs is where the trainer went wrong; up to
   t* the reference's parameters are the trainer's (within tolerance), so the
   hypotheses below are tested exactly there, each by whether its sketch
   matches the recorded one within the sketch tolerance:

   * noise std σ instead of σ·C: (S + σ·z)/D;
   * wrong denominator: (S + σC·z)/max(L, 1);
   * padding rows not masked: S plus the clipped gradients of the
     ⌈L/p⌉·p − L padding rows (the first sampled index, the trainer's
     padding rule) — p is the header's physical batch size;
   * noise reused across steps: the residual (recorded − S/D) equals
     σC/D·z_{t′} for an earlier step t′ (the last 256 steps are tried);
   * clipping after summation: (clip_C(Σ g_i) + σC·z)/D;
   * clipping at a larger norm than recorded (m·C for m in 2, 4, 10, the
     recorded max clipped norm / C) or not at all;
   * noise per physical batch (statistical; at least 3 failing segments):
     the residual's energy, summed over the first steps of up to 6 failing segments (exact parameters from
     their checkpoints), is ≈ B times one draw's (B the mean number of
     physical batches) instead of ≈ 1: named when √B < ratio < 2B and B ≥ 1.5.
     With 6 steps × 8 components (ν = 48) and B = 3, a correct draw crosses
     √3 with probability ≈ 6·10⁻⁴ and per-batch noise stays below it with
     probability ≈ 6·10⁻³.

0. **Noise not applied** (tried first: it is invisible to the sketches):
   the reference replayed *without noise* reaches the released checkpoint.

2. **Every recorded sketch matched** but the released parameters did not:
   the diagnosis says the applied update differs from the recorded one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["diagnose"]

#: Earlier steps whose noise the reuse hypothesis tries.
REUSE_WINDOW = 256
#: Failing segments whose first step feeds the per-batch-noise statistic.
STAT_SEGMENTS = 6


def diagnose(ctx: Any, segments: Any, ledger: Any) -> str | None:
    """Plain words naming the likely bug of the failing ``segments`` (shortest first), or ``None``."""
    segments = list(segments)
    if not segments:
        return None
    first = segments[0]
    if _noiseless_release(ctx, first):
        return (
            f"steps {first.start}–{first.end - 1}: the released parameters are the noiseless ones "
            "(the reference without noise reaches them) while the recorded update sketches are "
            "noisy: noise not applied to the update?"
        )
    words = _walk(ctx, first)
    if words is not None:
        return words
    return _per_batch_noise(ctx, segments)


def _sketch(tree: Any, k: int) -> np.ndarray:
    from trainers.sketch import update_sketch

    return np.asarray(update_sketch(tree, k=k), np.float64)


def _fits(recorded: Any, candidate: Any, precision: str) -> bool:
    from trainers.sketch import compare_sketches

    return bool(compare_sketches(recorded, candidate, precision=precision).ok)


def _walk(ctx: Any, segment: Any) -> str | None:
    from trainers.reference import reference_step

    start = ctx.restore(segment.start, segment.start_digest, segment.start_path)
    comps, data = ctx.components, ctx.dataset
    params, opt = start.params, start.opt_state
    for rec in segment.steps:
        if rec.update_sketch is None:
            return None
        kwargs = ctx.step_kwargs(rec)
        new_p, new_o, ref = reference_step(
            comps.model_apply,
            comps.optimizer,
            params,
            opt,
            data.x_train,
            data.y_train,
            rec.indices,
            sketch_dim=len(rec.update_sketch),
            **kwargs,
        )
        if not _fits(rec.update_sketch, ref.update_sketch, ctx.precision):
            return _at_step(ctx, rec, params, ref, kwargs)
        params, opt = new_p, new_o
    return (
        f"steps {segment.start}–{segment.end - 1}: every recorded update sketch matches the "
        "reference but the released parameters do not: the update applied is not the one recorded"
    )


def _at_step(ctx: Any, rec: Any, params: Any, ref: Any, kwargs: dict) -> str | None:
    from trainers.reference import reference_noise, reference_noisy_gradient

    h = ctx.header
    k = len(rec.update_sketch)
    s = np.asarray(rec.update_sketch, np.float64)
    C, sigma, D = kwargs["clip_norm"], kwargs["noise_multiplier"], kwargs["denominator"]
    t, L = rec.step, int(rec.indices.size)
    part = kwargs["threefry_partitionable"]
    z = _sketch(reference_noise(ctx.noise_key, t, params, threefry_partitionable=part), k)
    S = _sketch(ref.clipped_sum, k)
    prec = ctx.precision

    def fits(candidate: np.ndarray) -> bool:
        return _fits(s, candidate, prec)

    def clipped_sum(clip: float, idx: Any) -> tuple[np.ndarray, Any]:
        g = reference_noisy_gradient(
            ctx.components.model_apply,
            params,
            ctx.dataset.x_train,
            ctx.dataset.y_train,
            idx,
            clip_norm=clip,
            noise_multiplier=0.0,
            denominator=1.0,
            noise_key=ctx.noise_key,
            step=t,
            threefry_partitionable=part,
        )
        return _sketch(g.clipped_sum, k), g

    if sigma > 0 and C != 1.0 and fits((S + sigma * z) / D):
        return (
            f"at step {t} the recorded update matches noise std σ = {sigma:g} instead of "
            f"σ·C = {sigma * C:g}: noise not scaled by the clip norm?"
        )
    if L != D and fits((S + sigma * C * z) / max(L, 1)):
        return (
            f"at step {t} the recorded update matches division by the realised batch size "
            f"L = {L} instead of the declared denominator {D:g}: wrong denominator?"
        )
    p = h.physical_batch_size
    if p and L and (-L) % p:
        pad = (-L) % p
        one, _ = clipped_sum(C, rec.indices[:1])
        if fits((S + pad * one + sigma * C * z) / D):
            return (
                f"at step {t} the recorded update includes the {pad} padding row(s) of the last "
                "physical batch: padding rows not masked out?"
            )
    if sigma > 0:
        scale = sigma * C / D
        for t2 in range(t - 1, max(-1, t - 1 - REUSE_WINDOW), -1):
            z2 = _sketch(reference_noise(ctx.noise_key, t2, params, threefry_partitionable=part), k)
            if fits(S / D + scale * z2):
                return (
                    f"the noise added at step {t} is the draw of step {t2}: noise reused "
                    "across steps (the noise key did not advance)?"
                )
    raw, raw_ref = clipped_sum(1e300, rec.indices)
    raw_norm = math.sqrt(sum(float(np.sum(np.square(a))) for a in _leaves(raw_ref.clipped_sum)))
    if raw_norm > C and fits((raw * (C / raw_norm) + sigma * C * z) / D):
        return (
            f"at step {t} the recorded update matches the unclipped gradients summed, then the "
            "sum clipped to C: clipping after summation?"
        )
    mults = {2.0, 4.0, 10.0}
    if rec.max_clipped_norm is not None and math.isfinite(rec.max_clipped_norm):
        if rec.max_clipped_norm > C * (1 + 1e-5):
            mults.add(rec.max_clipped_norm / C)
    for m in sorted(mults):
        sm, _ = clipped_sum(m * C, rec.indices)
        if fits((sm + sigma * C * z) / D):
            return (
                f"at step {t} the recorded update matches per-example clipping at {m:.3g}·C "
                f"= {m * C:.3g}, not the recorded C = {C:g}: clipping at a larger norm than "
                "recorded?"
            )
    if fits((raw + sigma * C * z) / D):
        return f"at step {t} the recorded update matches unclipped gradients: clipping skipped?"
    return None


def _leaves(tree: Any) -> list:
    import jax

    return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(tree)]


def _noiseless_release(ctx: Any, segment: Any) -> bool:
    """Does the reference *without noise* reach the released checkpoint?"""
    from trainers.replay import compare_states, run_reference

    if all(ctx.step_kwargs(r)["noise_multiplier"] == 0 for r in segment.steps):
        return False
    start = ctx.restore(segment.start, segment.start_digest, segment.start_path)
    end = ctx.restore(segment.end, segment.end_digest, segment.end_path)
    p, o = run_reference(ctx, segment, start.params, start.opt_state, noise_multiplier=0.0)
    rel, _ = compare_states(p, o, start.params, end.params, end.opt_state)
    return rel <= ctx.tolerance


def _per_batch_noise(ctx: Any, segments: list) -> str | None:
    from trainers.reference import reference_noisy_gradient

    h = ctx.header
    p = h.physical_batch_size
    if not p:
        return None
    residual = expected = 0.0
    batches = []
    for seg in segments[:STAT_SEGMENTS]:
        rec = seg.steps[0]
        if rec.update_sketch is None:
            continue
        kwargs = ctx.step_kwargs(rec)
        sigma, C, D = kwargs["noise_multiplier"], kwargs["clip_norm"], kwargs["denominator"]
        if sigma <= 0:
            return None
        start = ctx.restore(seg.start, seg.start_digest, seg.start_path)
        k = len(rec.update_sketch)
        g = reference_noisy_gradient(
            ctx.components.model_apply,
            start.params,
            ctx.dataset.x_train,
            ctx.dataset.y_train,
            rec.indices,
            clip_norm=C,
            noise_multiplier=0.0,
            denominator=D,
            noise_key=ctx.noise_key,
            step=rec.step,
            threefry_partitionable=kwargs["threefry_partitionable"],
        )
        clean = _sketch(g.gradient, k)
        residual += float(np.sum((np.asarray(rec.update_sketch) - clean) ** 2))
        n_params = sum(a.size for a in _leaves(start.params))
        expected += k * n_params * (sigma * C / D) ** 2
        batches.append(max(1, math.ceil(rec.indices.size / p)))
    if len(batches) < 3 or expected <= 0:  # too few components for the variance test
        return None
    mean_b = float(np.mean(batches))
    ratio = residual / expected
    if mean_b >= 1.5 and math.sqrt(mean_b) < ratio < 2.0 * mean_b:
        return (
            f"the noise in the recorded updates has about {ratio:.2g} times the variance of one "
            f"draw, and steps ran in {mean_b:.2g} physical batches on average: noise added per "
            "physical batch instead of once per step?"
        )
    return None
