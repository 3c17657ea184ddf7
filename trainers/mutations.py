"""Deliberately wrong DP-SGD variants, for testing that the auditor catches them.

Each mutation is a bug seen in real DP-SGD implementations, written as an
alternative composition of the step: the correct
:data:`trainers.dp_math.PRODUCTION` :class:`~trainers.dp_math.Mechanics` with
one or two of its pieces replaced (:func:`mechanics_for`).  The production
step therefore carries no deliberately wrong code path; a mutated trainer is
``MaskedDPSGD(..., DPSGDConfig(mutation=NAME))`` or
``MaskedDPSGD(..., mechanics=mechanics_for(NAME))``.

A mutated trainer records in its ``StepStats`` what a naive buggy
implementation believes it did: ``noise_std = σ·C``, ``noise_draws = 1`` and
``denominator = q·N`` (the configured values), while ``num_clipped``,
``max_grad_norm``, ``max_clipped_norm``, ``update_sketch`` and ``loss`` are
measured from what was really computed.  The auditor's replay of released
parameters (checkpoint k → float64 reference over every step → checkpoint
k+1) must disagree with what it released.

============================  ====================================================
name                          bug
============================  ====================================================
``unmasked_padding``          padding rows of the last physical batch are summed
                              (and counted in the stats) as if they were real
``noise_per_physical_batch``  fresh noise N(0, σ²C²) added to every physical
                              batch's sum instead of once per logical step
``noise_std_sigma``           noise standard deviation σ instead of σ·C
``clip_after_sum``            per-example gradients summed unclipped, then the
                              sum clipped to norm C
``wrong_denominator``         noisy sum divided by the realised batch size L
                              (max(L, 1)) instead of the expected q·N
``noise_reused_across_steps`` the noise key advances only every
                              :data:`REUSE_PERIOD` steps (e.g. only at
                              checkpoints): the same draw is added to 25
                              consecutive updates
``noise_not_applied``         the optimiser receives the noiseless clipped mean
                              while the recorded update sketch is of the noisy one
``larger_clip_norm``          examples are clipped at 2·C while C is recorded
                              (and the noise is σ·C)
``noise_per_process``         in a P-process job every process adds the step's
                              noise σC·z_t (same key) to its partial sum before
                              the cross-process reduction: S + P·σC·z_t
============================  ====================================================

Which inputs expose them (a mutation is invisible when its bug is a no-op):
``unmasked_padding`` needs L not a multiple of p; ``noise_std_sigma`` needs
C ≠ 1 and σ > 0; ``clip_after_sum`` and ``larger_clip_norm`` need some
per-example norm above C; ``wrong_denominator`` needs L ≠ q·N;
``noise_per_physical_batch``, ``noise_not_applied`` need σ > 0;
``noise_reused_across_steps`` needs σ > 0 and a step t with t mod 25 ≠ 0;
``noise_per_process`` needs σ > 0 and P > 1 processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dpverify._validate import check_choice

__all__ = ["MUTATIONS", "PROCESS_MUTATIONS", "REUSE_PERIOD", "check_mutation", "mechanics_for"]

#: Mutation name → one-line description of the bug.
MUTATIONS: dict[str, str] = {
    "unmasked_padding": "padding rows are included in the gradient sum",
    "noise_per_physical_batch": "noise is added once per physical batch, not once per step",
    "noise_std_sigma": "noise standard deviation is sigma instead of sigma * clip_norm",
    "clip_after_sum": "the summed gradient is clipped instead of each example's",
    "wrong_denominator": "the noisy sum is divided by the realised batch size",
    "noise_reused_across_steps": "the noise key advances only every 25 steps",
    "noise_not_applied": "the optimiser receives the noiseless mean; the sketch is noisy",
    "larger_clip_norm": "examples are clipped at twice the recorded clip norm",
}

#: Bugs that only exist in a multi-process job (a no-op on one process), so
#: they are not in :data:`MUTATIONS` (every one of which a single step
#: exposes); ``tests/trainers/test_multiprocess.py`` shows the audit refutes them.
PROCESS_MUTATIONS: dict[str, str] = {
    "noise_per_process": "every process of a multi-process job adds the step's noise",
}

#: Steps sharing one noise draw in ``noise_reused_across_steps``.
REUSE_PERIOD = 25


def check_mutation(mutation: str | None) -> str | None:
    """``mutation`` if it is ``None`` or a name in :data:`MUTATIONS` or :data:`PROCESS_MUTATIONS`."""
    if mutation is None:
        return None
    return check_choice("mutation", mutation, (*MUTATIONS, *PROCESS_MUTATIONS))


# -- the wrong pieces ---------------------------------------------------------------------


def _all_rows(mask: Any) -> Any:
    import jax.numpy as jnp

    return jnp.ones_like(mask)


def _per_batch_noise(sums: list, noise_key: Any, step: Any, batch: Any, config: Any) -> list:
    import jax
    import jax.numpy as jnp

    from trainers.dp_math import gaussian_noise

    z = jax.tree_util.tree_leaves(gaussian_noise(noise_key, step, sums, batch=batch))
    std = jnp.float32(config.noise_std)
    return [s + std * n for s, n in zip(sums, z, strict=True)]


def _no_step_noise(leaves: list, noise_key: Any, step: Any, config: Any) -> list:
    return leaves


def _sigma_noise(leaves: list, noise_key: Any, step: Any, config: Any) -> list:
    import jax
    import jax.numpy as jnp

    from trainers.dp_math import gaussian_noise

    z = jax.tree_util.tree_leaves(gaussian_noise(noise_key, step, leaves))
    std = jnp.float32(config.noise_multiplier)
    return [s + std * n for s, n in zip(leaves, z, strict=True)]


def _unclipped(norms: Any, finite: Any, clip_norm: float) -> Any:
    import jax.numpy as jnp

    return jnp.where(finite, 1.0, 0.0).astype(jnp.float32)


def _clip_the_sum(leaves: list, trainable: tuple[bool, ...], config: Any) -> list:
    import jax.numpy as jnp

    norm = jnp.sqrt(
        sum(jnp.sum(jnp.square(s)) for s, t in zip(leaves, trainable, strict=True) if t)
    )
    clip = jnp.float32(config.clip_norm)
    scale = clip / jnp.maximum(norm, clip)
    return [s * scale for s in leaves]


def _realised_denominator(count: Any, config: Any) -> Any:
    import jax.numpy as jnp

    return jnp.maximum(count, 1).astype(jnp.float32)


def _key_every_period(noise_key: Any, step: Any) -> Any:
    return noise_key, step - step % REUSE_PERIOD


def _release_clean(noisy: Any, clean: Any) -> Any:
    return clean


def _noise_on_every_process(leaves: list, noise_key: Any, step: Any, config: Any) -> list:
    """Σ over the P processes of (partial sum + σC·z_t) = S + P·σC·z_t."""
    import jax
    import jax.numpy as jnp

    from trainers.dp_math import gaussian_noise

    z = jax.tree_util.tree_leaves(gaussian_noise(noise_key, step, leaves))
    std = jnp.float32(config.noise_std * jax.process_count())
    return [s + std * n for s, n in zip(leaves, z, strict=True)]


def mechanics_for(mutation: str | None) -> Any:
    """The :class:`~trainers.dp_math.Mechanics` of ``mutation`` (``None`` → ``PRODUCTION``)."""
    from trainers.dp_math import PRODUCTION

    name = check_mutation(mutation)
    if name is None:
        return PRODUCTION
    replacements: dict[str, dict[str, Any]] = {
        "unmasked_padding": {"real_rows": _all_rows},
        "noise_per_physical_batch": {"batch_noise": _per_batch_noise, "step_noise": _no_step_noise},
        "noise_std_sigma": {"step_noise": _sigma_noise},
        "clip_after_sum": {"clip_factors": _unclipped, "transform_sum": _clip_the_sum},
        "wrong_denominator": {"denominator": _realised_denominator},
        "noise_reused_across_steps": {"noise_key_for_step": _key_every_period},
        "noise_not_applied": {"released": _release_clean},
        "larger_clip_norm": {"clip_norm_scale": 2.0},
        "noise_per_process": {"step_noise": _noise_on_every_process},
    }
    return dataclasses.replace(PRODUCTION, **replacements[name])
