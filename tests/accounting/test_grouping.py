"""Grouping and bracketing of (q, σ) schedules; cyclic Poisson groups."""

import math

import pytest

from dpverify.accounting import Segment, compute_epsilon
from dpverify.accounting.grouping import bracket_groups, cyclic_groups, group_segments
from dpverify.errors import InvalidArgument


def test_equal_pairs_are_grouped_run_wide():
    segs = [
        Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=3),
        Segment(sampling_rate=0.02, noise_multiplier=1.0, steps=2),
        Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=4),
    ]
    assert group_segments(segs) == [((0.01, 1.0), 7), ((0.02, 1.0), 2)]


def test_bracket_dominates_and_is_dominated_step_by_step():
    groups = [((0.001 + 0.009 * min(t, 99) / 99, 1.5 - 0.7 * t / 999), 1) for t in range(1000)]
    upper, lower = bracket_groups(groups, 16)
    assert len(upper) == len(lower) <= 16
    assert sum(c for _, c in upper) == sum(c for _, c in lower) == 1000
    # every step is covered by a cluster whose upper pair has q ≥ and σ ≤ the step's,
    # and whose lower pair has q ≤ and σ ≥ it: expand the clusters in the same order
    ordered = sorted(groups, key=lambda g: (g[0][0], -g[0][1]))
    expanded_u = [pair for pair, c in upper for _ in range(c)]
    expanded_l = [pair for pair, c in lower for _ in range(c)]
    for (q, s), _ in ordered:
        (qu, su), (ql, sl) = expanded_u.pop(0), expanded_l.pop(0)
        assert qu >= q and su <= s and ql <= q and sl >= s
    assert bracket_groups(groups[:5], 16) == (groups[:5], groups[:5])
    with pytest.raises(InvalidArgument):
        bracket_groups(groups, 0)


def test_cyclic_groups_count_ceil_t_over_b_at_rate_bq():
    segs = [Segment(sampling_rate=0.01, noise_multiplier=1.2, steps=10)]
    assert cyclic_groups(segs, 4) == [((0.04, 1.2), 3)]
    assert cyclic_groups(segs, 200) == [((1.0, 1.2), 1)]  # b·q capped at 1
    with pytest.raises(InvalidArgument):
        cyclic_groups(segs, 0)


def test_cyclic_poisson_is_accounted_as_dp_accounting_composes_it():
    """SelfComposed(PoissonSampled(b·q, Gaussian(σ)), ceil(T/b)), built with dp-accounting here."""
    import dp_accounting as dpa
    from dp_accounting import pld, rdp

    q, sigma, steps, b, delta = 0.005, 1.1, 1000, 4, 1e-5
    seg = Segment(sampling_rate=q, noise_multiplier=sigma, steps=steps)
    ours = compute_epsilon(
        seg, delta, sampler="cyclic_poisson", sampler_params={"cycle_length": b}
    )
    event = dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(b * q, dpa.GaussianDpEvent(sigma)), math.ceil(steps / b)
    )
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(event)
    assert ours.pld.epsilon == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
    acc = rdp.RdpAccountant()
    acc.compose(event)
    assert ours.rdp.epsilon == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
    assert ours.prv.details["lower"] <= ours.pld.epsilon <= ours.prv.epsilon
    plain = compute_epsilon(seg, delta, accountants="rdp")
    assert ours.rdp.epsilon > plain.rdp.epsilon  # same q·T, concentrated: costs more
    bad = compute_epsilon(seg, delta, sampler="cyclic_poisson", accountants="rdp")
    assert bad.rdp.epsilon is None and "cycle_length" in bad.rdp.reason


def test_clusters_are_narrower_where_the_privacy_loss_is():
    """Cuts by share of the loss: the small-σ end gets small clusters, the large-σ end big ones."""
    from dpverify.accounting.grouping import bracket_groups

    groups = [((0.01, 1.5 - 0.7 * t / 119), 1) for t in range(120)]
    upper, lower = bracket_groups(groups, 12)
    assert len(upper) == len(lower) == 12 and sum(c for _, c in upper) == 120
    by_sigma = sorted(upper, key=lambda g: g[0][1])
    assert by_sigma[0][1] < 10 < by_sigma[-1][1]  # equal counts would be 10 each
    for ((qu, su), cu), ((ql, sl), cl) in zip(upper, lower, strict=True):
        assert cu == cl and qu >= ql and su <= sl
