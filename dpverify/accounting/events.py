"""dp-accounting events of grouped (q, σ) steps, per declared sampler.

A Poisson-subsampled Gaussian step is ``PoissonSampledDpEvent(q,
GaussianDpEvent(σ))``; T such steps are ``SelfComposedDpEvent(…, T)``; a run
whose (q, σ) changed is a ``ComposedDpEvent`` of self-composed groups.  A
cyclic Poisson run (``b`` groups used in turn, overall rate q) is, per example
of the most active group, ``SelfComposed(PoissonSampled(min(1, b·q),
Gaussian(σ)), ceil(T/b))`` (Choquette-Choo et al. 2024, arXiv:2410.06266; see
:func:`dpverify.accounting.grouping.cyclic_groups`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dpverify.accounting.grouping import Groups, cyclic_groups, group_segments
from dpverify.accounting.segments import Segment
from dpverify.accounting.support import accounting_kind, sampler_sizes
from dpverify.errors import InvalidArgument

__all__ = ["build_event", "event_from_groups", "groups_for_sampler"]


def groups_for_sampler(
    segments: Iterable[Segment], sampler: str, sampler_params: Mapping[str, Any] | None
) -> Groups:
    """The (q, σ) groups the sampler's event composes (cyclic Poisson: per active group)."""
    if accounting_kind(sampler) == "cyclic_poisson":
        b = dict(sampler_params or {}).get("cycle_length")
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise InvalidArgument(
                f"sampler 'cyclic_poisson' needs an integer sampler_params['cycle_length'] >= 1, "
                f"got {b!r}"
            )
        return cyclic_groups(segments, b)
    return group_segments(segments)


def build_event(
    segments: Iterable[Segment],
    *,
    sampler: str = "poisson",
    sampler_params: Mapping[str, Any] | None = None,
):  # -> dp_accounting.DpEvent
    """The dp-accounting event of the executed segments.

    Args:
        segments: executed segments.
        sampler: ``"poisson"``, ``"cyclic_poisson"`` (needs ``cycle_length``),
            ``"truncated_poisson"`` (needs ``cap`` and ``dataset_size`` in
            ``sampler_params``) or ``"fixed_size"`` (needs ``dataset_size``;
            ``batch_size`` defaults to round(qN)).
        sampler_params: see ``sampler``.

    Returns:
        ``SelfComposedDpEvent`` for one (q, σ) group, else a ``ComposedDpEvent``
        of them.

    Raises:
        InvalidArgument: no segments, a sampler without an event, or missing sizes.
    """
    groups = groups_for_sampler(list(segments), sampler, sampler_params)
    return event_from_groups(groups, sampler=sampler, sampler_params=sampler_params)


def event_from_groups(
    groups: Sequence[tuple[tuple[float, float], int]],
    *,
    sampler: str = "poisson",
    sampler_params: Mapping[str, Any] | None = None,
):  # -> dp_accounting.DpEvent
    """The dp-accounting event of ``[((q, σ), steps), ...]`` groups (already per-group for
    ``cyclic_poisson``; see :func:`build_event`)."""
    import dp_accounting as dpa

    if not groups:
        raise InvalidArgument("segments must contain at least one step")
    kind = accounting_kind(sampler)
    if kind not in ("poisson", "cyclic_poisson", "truncated_poisson", "fixed_size"):
        raise InvalidArgument(f"sampler={sampler!r} has no dp-accounting event")
    qs = {q for (q, _), _ in groups}
    params = dict(sampler_params or {})
    if kind == "fixed_size" and len(qs) > 1:
        params.pop("batch_size", None)  # derive each segment's size from its own q
        params.pop("sample_size", None)
    parts = []
    for (q, sigma), count in groups:
        if kind in ("poisson", "cyclic_poisson"):
            ev = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma))
        elif kind == "truncated_poisson":
            sizes = sampler_sizes(sampler, q, params)
            ev = dpa.TruncatedSubsampledGaussianDpEvent(
                dataset_size=sizes["dataset_size"],
                sampling_probability=q,
                truncated_batch_size=sizes["cap"],
                noise_multiplier=sigma,
            )
        else:
            sizes = sampler_sizes(sampler, q, params)
            ev = dpa.SampledWithoutReplacementDpEvent(
                sizes["dataset_size"], sizes["batch_size"], dpa.GaussianDpEvent(sigma)
            )
        parts.append(dpa.SelfComposedDpEvent(ev, count))
    return parts[0] if len(parts) == 1 else dpa.ComposedDpEvent(parts)
