"""Deliberately wrong DP-SGD variants, for testing that the auditor catches them.

Each mutation is a bug seen in real DP-SGD implementations.  A mutated
:class:`trainers.dpsgd.MaskedDPSGD` (``DPSGDConfig(mutation=NAME)``) computes
the *buggy* update but records in its ``StepStats`` what a naive buggy
implementation would believe it did: ``noise_std = σ·C``, ``noise_draws = 1``
and ``denominator = q·N`` (the configured values), while ``num_clipped``,
``max_grad_norm``, ``max_clipped_norm``, ``update_sketch`` and ``loss`` are
measured from what was really computed.  The auditor's replay (the float64
reference trainer recomputing the sketch from the ledger's indices and the
noise key) must then disagree with the recorded sketch.

=========================  =====================================================
name                       bug
=========================  =====================================================
``unmasked_padding``       padding rows of the last physical batch are summed
                           (and counted in the stats) as if they were real
``noise_per_physical_batch`` fresh noise N(0, σ²C²) added to every physical
                           batch's sum instead of once per logical step
``noise_std_sigma``        noise standard deviation σ instead of σ·C
``clip_after_sum``         per-example gradients summed unclipped, then the
                           sum clipped to norm C
``wrong_denominator``      noisy sum divided by the realised batch size L
                           (max(L, 1)) instead of the expected q·N
=========================  =====================================================

Which inputs expose them (a mutation is invisible when its bug is a no-op):
``unmasked_padding`` needs L not a multiple of p; ``noise_std_sigma`` needs
C ≠ 1 and σ > 0; ``clip_after_sum`` needs some per-example norm above C;
``wrong_denominator`` needs L ≠ q·N; ``noise_per_physical_batch`` needs σ > 0.
"""

from __future__ import annotations

import dataclasses

from dpverify._validate import check_choice

__all__ = ["MUTATIONS", "MutationFlags", "check_mutation", "mutation_flags"]

#: Mutation name → one-line description of the bug.
MUTATIONS: dict[str, str] = {
    "unmasked_padding": "padding rows are included in the gradient sum",
    "noise_per_physical_batch": "noise is added once per physical batch, not once per step",
    "noise_std_sigma": "noise standard deviation is sigma instead of sigma * clip_norm",
    "clip_after_sum": "the summed gradient is clipped instead of each example's",
    "wrong_denominator": "the noisy sum is divided by the realised batch size",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MutationFlags:
    """The switches the masked step reads; all false for a correct trainer."""

    include_padding: bool = False
    noise_per_physical_batch: bool = False
    noise_std_sigma: bool = False
    clip_after_sum: bool = False
    divide_by_realised: bool = False

    @property
    def any(self) -> bool:
        """True for a mutated (wrong) trainer."""
        return any(dataclasses.astuple(self))


def check_mutation(mutation: str | None) -> str | None:
    """``mutation`` if it is ``None`` or a name in :data:`MUTATIONS`."""
    if mutation is None:
        return None
    return check_choice("mutation", mutation, tuple(MUTATIONS))


def mutation_flags(mutation: str | None) -> MutationFlags:
    """The :class:`MutationFlags` of ``mutation`` (``None`` → correct trainer)."""
    name = check_mutation(mutation)
    return MutationFlags(
        include_padding=name == "unmasked_padding",
        noise_per_physical_batch=name == "noise_per_physical_batch",
        noise_std_sigma=name == "noise_std_sigma",
        clip_after_sum=name == "clip_after_sum",
        divide_by_realised=name == "wrong_denominator",
    )
