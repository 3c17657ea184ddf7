"""Grouping executed steps by (q, σ), and bracketing a schedule with few groups.

Composition is commutative, so steps with equal (sampling rate q, noise
multiplier σ) are accounted as one self-composed group wherever they occur
(:func:`group_segments`).  A schedule whose q or σ changes at every step (σ
decay, q warm-up) has as many groups as steps; the tight accountants cost
about one FFT-sized pass per group, so such a schedule is *bracketed*
(:func:`bracket_groups`): the distinct pairs, sorted by (q, σ), are cut into at
most ``max_groups`` contiguous clusters holding about equal numbers of steps,
and each cluster is accounted twice, once at (its largest q, its smallest σ)
and once at (its smallest q, its largest σ).

The Poisson-subsampled Gaussian's privacy profile δ(ε) increases with q and
decreases with σ (a larger q is a post-processing-free "more sampling", a
smaller σ a less noisy release; Zhu, Dong & Wang 2022, arXiv:2106.08567,
Lemma on monotonicity of the dominating pair), so the first composition
dominates the run (its ε is an upper bound) and the run dominates the second
(its ε is a lower bound).  The gap between the two is the rounding, computed
for every run and stated in the reason; no refutation rests on the upper one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from dpverify.accounting.segments import Segment
from dpverify.errors import InvalidArgument

__all__ = ["Groups", "bracket_groups", "cyclic_groups", "group_segments"]

#: ``[((q, σ), steps), ...]``
Groups = list[tuple[tuple[float, float], int]]


def group_segments(segments: Iterable[Segment]) -> Groups:
    """``[((q, σ), total steps), ...]`` in first-seen order: equal (q, σ) grouped run-wide."""
    groups: dict[tuple[float, float], int] = {}
    for seg in segments:
        if not isinstance(seg, Segment):
            raise InvalidArgument(f"segments must be Segment objects, got {type(seg).__name__}")
        groups[seg.key] = groups.get(seg.key, 0) + seg.steps
    return list(groups.items())


def cyclic_groups(segments: Iterable[Segment], cycle_length: int) -> Groups:
    """Groups of a cyclic Poisson run, per example of the most active group.

    With ``b = cycle_length`` groups used in turn and overall rate q, an example
    is eligible only when its group is active, and is then included with
    probability ``min(1, b·q)``.  Over a segment of T consecutive steps, no group
    is active more than ``ceil(T / b)`` times, so each segment contributes
    ``ceil(T / b)`` compositions of PoissonSampled(min(1, b·q), Gaussian(σ))
    (an upper bound when T is not a multiple of b; exact otherwise).
    ``segments`` must be cut at every resume (:func:`segments_from_steps` does).
    """
    b = int(cycle_length)
    if b < 1:
        raise InvalidArgument(f"cycle_length={cycle_length!r} must be an integer >= 1")
    groups: dict[tuple[float, float], int] = {}
    for seg in segments:
        key = (min(1.0, b * seg.sampling_rate), seg.noise_multiplier)
        groups[key] = groups.get(key, 0) + math.ceil(seg.steps / b)
    return list(groups.items())


def bracket_groups(groups: Sequence[tuple[tuple[float, float], int]], max_groups: int) -> tuple[
    Groups, Groups
]:
    """``(upper, lower)``: at most ``max_groups`` groups that dominate / are dominated by the run.

    Returns the input twice when it already has at most ``max_groups`` groups.
    Clusters are contiguous in (q, σ) order and hold about equal shares of the
    run's privacy loss, measured per pair by its order-2 Rényi divergence
    ``count · log(1 + q²(e^{1/σ²} − 1))`` (Mironov, Talwar & Zhang 2019,
    arXiv:1908.10530, the integer-order bound at α = 2): a cluster's rounding
    costs about its span times its share of the loss, so the cuts are dense
    where the loss is (small σ, large q).  Any contiguous cut keeps the
    bracket valid; the weights only decide how tight it is.
    """
    if max_groups < 1:
        raise InvalidArgument(f"max_groups={max_groups!r} must be >= 1")
    if len(groups) <= max_groups:
        return list(groups), list(groups)
    ordered = sorted(groups, key=lambda g: (g[0][0], -g[0][1]))
    weights = [_loss_weight(q, sigma) * count for (q, sigma), count in ordered]
    if not all(math.isfinite(w) for w in weights) or sum(weights) <= 0:
        weights = [float(count) for _, count in ordered]
    total = sum(weights)
    upper: Groups = []
    lower: Groups = []
    cluster: list[tuple[tuple[float, float], int]] = []
    done = 0.0
    for i, item in enumerate(ordered):
        cluster.append(item)
        done += weights[i]
        left = len(ordered) - i - 1
        slots = max_groups - len(upper) - 1
        target = total * (len(upper) + 1) / max_groups
        if (done >= target and slots > 0) or left == 0 or left < slots:
            _close(cluster, upper, lower)
            cluster = []
    if cluster:
        _close(cluster, upper, lower)
    return upper, lower


def _loss_weight(q: float, sigma: float) -> float:
    """One step's order-2 RDP bound ``log(1 + q²(e^{1/σ²} − 1))`` (a weight, not a bound)."""
    exponent = 1.0 / (sigma * sigma) if sigma > 0 else math.inf
    if exponent > 700:
        return 2 * math.log(q) + exponent if q > 0 else 0.0
    return math.log1p(q * q * math.expm1(exponent))


def _close(cluster: list, upper: Groups, lower: Groups) -> None:
    qs = [q for (q, _), _ in cluster]
    sigmas = [s for (_, s), _ in cluster]
    count = sum(c for _, c in cluster)
    upper.append(((max(qs), min(sigmas)), count))
    lower.append(((min(qs), max(sigmas)), count))
