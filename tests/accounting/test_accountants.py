"""compute_epsilon / compute_delta against the libraries called directly."""

import math

import dp_accounting as dpa
import prv_accountant
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from dpverify.accounting import Segment, build_event, compute_delta, compute_epsilon
from dpverify.accounting._prv import prv_epsilon_bounds, prv_mechanism
from dpverify.errors import InvalidArgument

DELTA = 1e-5
HETERO = [
    Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=300),
    Segment(sampling_rate=0.02, noise_multiplier=1.5, steps=200),
    Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=100),  # same (q, σ) as the first
    Segment(sampling_rate=0.005, noise_multiplier=0.8, steps=400),
]


def _direct_events(segments):
    return [
        dpa.PoissonSampledDpEvent(s.sampling_rate, dpa.GaussianDpEvent(s.noise_multiplier))
        for s in segments
    ]


def test_heterogeneous_rdp_equals_direct_step_by_step_composition():
    acc = rdp.RdpAccountant()
    for seg, ev in zip(HETERO, _direct_events(HETERO), strict=True):
        acc.compose(ev, seg.steps)  # in execution order, one segment at a time
    expected = acc.get_epsilon(DELTA)
    got = compute_epsilon(HETERO, DELTA, accountants=("rdp",)).rdp.epsilon
    assert got == pytest.approx(expected, rel=1e-12)


def test_heterogeneous_pld_equals_direct_composition():
    acc = pld.PLDAccountant(value_discretization_interval=1e-3)
    for seg, ev in zip(HETERO, _direct_events(HETERO), strict=True):
        acc.compose(ev, seg.steps)
    expected = acc.get_epsilon(DELTA)
    got = compute_epsilon(HETERO, DELTA, accountants=("pld",), pld_discretization=1e-3).pld.epsilon
    # grouping equal (q, σ) changes only the order of discretised convolutions
    assert got == pytest.approx(expected, abs=2e-3)


def test_heterogeneous_prv_equals_prv_accountant():
    groups = {}
    for s in HETERO:
        groups[s.key] = groups.get(s.key, 0) + s.steps
    prvs = [
        prv_accountant.PoissonSubsampledGaussianMechanism(
            sampling_probability=q, noise_multiplier=sg
        )
        for q, sg in groups
    ]
    acc = prv_accountant.PRVAccountant(
        prvs=prvs,
        eps_error=0.01,
        delta_error=DELTA / 1000,
        max_self_compositions=list(groups.values()),
    )
    lower, estimate, upper = acc.compute_epsilon(DELTA, list(groups.values()))
    got = compute_epsilon(HETERO, DELTA, accountants=("prv",)).prv.details
    assert got["estimate"] == pytest.approx(estimate, abs=1e-3)
    assert got["upper"] == pytest.approx(upper, abs=1e-3)
    assert got["lower"] == pytest.approx(lower, abs=1e-3)


def test_fast_prv_grid_matches_the_library_accountant():
    prv = prv_mechanism(0.02, 1.2)
    acc = prv_accountant.PRVAccountant(
        prvs=[prv], eps_error=0.01, delta_error=1e-8, max_self_compositions=[500]
    )
    expected = acc.compute_epsilon(1e-5, [500])
    got = prv_epsilon_bounds([prv], [500], 1e-5, eps_error=0.01, delta_error=1e-8)
    assert got == pytest.approx(expected, abs=1e-6)


def test_build_event_groups_equal_pairs():
    event = build_event(HETERO)
    assert isinstance(event, dpa.ComposedDpEvent)
    assert [e.count for e in event.events] == [400, 200, 400]
    single = build_event([HETERO[0]])
    assert isinstance(single, dpa.SelfComposedDpEvent) and single.count == 300


def test_resumed_run_with_repeats_costs_more():
    plain = [Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=1000)]
    resumed = [  # steps 600..699 executed twice after a restart from step 600
        Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=700),
        Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=400),
    ]
    a = compute_epsilon(plain, DELTA, accountants=("rdp", "pld"))
    b = compute_epsilon(resumed, DELTA, accountants=("rdp", "pld"))
    assert b.steps == 1100
    assert b.rdp.epsilon > a.rdp.epsilon
    assert b.pld.epsilon > a.pld.epsilon + 0.01


@pytest.mark.parametrize(
    ("q", "sigma", "steps"),
    [(0.01, 1.0, 200), (0.05, 2.0, 100), (0.001, 0.8, 500), (0.1, 1.5, 50)],
)
def test_pld_within_prv_bounds_and_rdp_above(q, sigma, steps):
    r = compute_epsilon(Segment(sampling_rate=q, noise_multiplier=sigma, steps=steps), DELTA)
    assert r.prv.details["lower"] <= r.pld.epsilon <= r.prv.details["upper"]
    assert r.rdp.epsilon >= r.pld.epsilon
    assert r.tight == r.pld.epsilon


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    q=st.floats(1e-3, 1.0),
    sigma=st.floats(0.6, 5.0),
    steps=st.integers(1, 1000),
    log_delta=st.floats(-9, -3),
)
def test_rdp_is_never_below_pld(q, sigma, steps, log_delta):
    seg = Segment(sampling_rate=q, noise_multiplier=sigma, steps=steps)
    r = compute_epsilon(seg, 10**log_delta, accountants=("rdp", "pld"))
    # Both are upper bounds on the true ε; RDP is the looser one.  PLD's
    # pessimistic rounding can put it above the true ε by about one
    # discretisation interval (1e-4), which is all the slack allowed.
    assert r.rdp.epsilon >= r.pld.epsilon - r.pld.details["value_discretization_interval"]


def test_replace_one_is_pld_only_for_poisson_and_costs_more():
    seg = Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=100)
    add_remove = compute_epsilon(seg, DELTA, accountants=("pld",))
    r = compute_epsilon(seg, DELTA, neighbouring="replace_one")
    assert r.rdp.epsilon is None and "replace_one" in r.rdp.reason
    assert r.prv.epsilon is None and "replace_one" in r.prv.reason
    assert r.pld.epsilon > add_remove.pld.epsilon


def test_truncated_poisson_uses_pld_only():
    seg = Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=20)
    r = compute_epsilon(
        seg,
        DELTA,
        sampler="truncated_poisson",
        sampler_params={"dataset_size": 1000, "cap": 30},
        pld_discretization=1e-3,
    )
    assert r.rdp.epsilon is None and r.prv.epsilon is None
    acc = pld.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(
        dpa.SelfComposedDpEvent(
            dpa.TruncatedSubsampledGaussianDpEvent(
                dataset_size=1000,
                sampling_probability=0.01,
                truncated_batch_size=30,
                noise_multiplier=1.0,
            ),
            20,
        )
    )
    assert r.pld.epsilon == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)
    # a header without the cap: reported, not raised (the auditor must not crash)
    no_cap = compute_epsilon(
        seg, DELTA, sampler="truncated_poisson", sampler_params={"dataset_size": 1000}
    )
    assert no_cap.pld.epsilon is None and "cap" in no_cap.pld.reason
    with pytest.raises(InvalidArgument, match="cap"):
        build_event([seg], sampler="truncated_poisson", sampler_params={"dataset_size": 1000})


def test_fixed_size_is_rdp_under_replace_one_only():
    seg = Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=100)
    params = {"dataset_size": 1000}
    r = compute_epsilon(
        seg, DELTA, sampler="fixed_size", sampler_params=params, neighbouring="replace_one"
    )
    acc = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(
        dpa.SelfComposedDpEvent(
            dpa.SampledWithoutReplacementDpEvent(1000, 10, dpa.GaussianDpEvent(1.0)), 100
        )
    )
    assert r.rdp.epsilon == pytest.approx(acc.get_epsilon(DELTA), rel=1e-12)
    assert r.pld.epsilon is None and r.prv.epsilon is None
    add_remove = compute_epsilon(seg, DELTA, sampler="fixed_size", sampler_params=params)
    assert all(x.epsilon is None and x.reason for x in add_remove.results())


def test_shuffle_has_no_upper_bound_but_a_lower_bound():
    seg = Segment(sampling_rate=0.001, noise_multiplier=0.8, steps=1000)
    r = compute_epsilon(seg, DELTA, sampler="shuffle")
    assert all(x.epsilon is None and "upper bound" in x.reason for x in r.results())
    assert r.lower_bound == pytest.approx(5.2, abs=0.1)
    assert any("Poisson" in n and "does not apply" in n for n in r.notes)
    assert r.to_json()["pld"] is None and "pld" in r.to_json()["reasons"]


@pytest.mark.parametrize("sampler", ["balls_in_bins", "shuffle_binomial", "mystery"])
def test_other_non_poisson_samplers_are_unbounded(sampler):
    r = compute_epsilon(
        Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10), DELTA, sampler=sampler
    )
    assert all(x.epsilon is None and x.reason for x in r.results())
    assert r.lower_bound is None


def test_prv_failure_is_reported_never_raised():
    # prv-accountant raises "Discrete mean differs from continuous mean" here.
    seg = Segment(sampling_rate=0.2, noise_multiplier=0.3, steps=100)
    r = compute_epsilon(seg, DELTA, accountants=("prv",))
    assert r.prv.epsilon is None
    assert r.prv.reason.startswith("PRV unavailable:") and "mean" in r.prv.reason
    assert r.to_json()["prv"] is None and r.to_json()["reasons"]["prv"] == r.prv.reason


def test_zero_noise_is_infinite_and_no_steps_is_zero():
    r = compute_epsilon(Segment(sampling_rate=0.1, noise_multiplier=0.0, steps=3), DELTA)
    assert all(math.isinf(x.epsilon) for x in r.results())
    js = r.to_json()
    assert js["rdp"] is None and "infinite" in js["reasons"]["rdp"]
    empty = compute_epsilon([], DELTA)
    assert all(x.epsilon == 0.0 for x in empty.results()) and empty.steps == 0


def test_rdp_grid_edge_is_flagged():
    # very few orders: the optimum sits at the largest one
    r = compute_epsilon(
        Segment(sampling_rate=0.001, noise_multiplier=5.0, steps=10),
        DELTA,
        accountants="rdp",
        rdp_orders=[1.5, 2.0],
    )
    assert r.rdp.epsilon is not None
    assert "edge of the order grid" in r.rdp.reason
    assert r.rdp.details["order"] == 2.0


def test_results_carry_timings_and_not_requested():
    r = compute_epsilon(
        Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10), DELTA, accountants=("rdp",)
    )
    assert r.rdp.seconds > 0
    assert r.pld.epsilon is None and r.pld.reason == "not requested"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"accountants": ("moments",)}, "accountant"),
        ({"neighbouring": "swap"}, "neighbouring"),
    ],
)
def test_bad_arguments_raise_invalid_argument(kwargs, match):
    args = {"delta": DELTA, **kwargs}
    delta = args.pop("delta")
    with pytest.raises(InvalidArgument, match=match):
        compute_epsilon(Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10), delta, **args)


def test_compute_delta_inverts_compute_epsilon():
    seg = Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=300)
    eps = compute_epsilon(seg, DELTA, accountants=("rdp", "pld"))
    d = compute_delta(seg, eps.pld.epsilon, accountants=("pld", "rdp", "prv"))
    assert d.deltas["pld"] == pytest.approx(DELTA, rel=0.02)
    assert d.deltas["rdp"] > DELTA
    assert d.details["prv"]["lower"] <= DELTA <= d.deltas["prv"]


def test_many_distinct_pairs_are_rounded_pessimistically():
    segs = [
        Segment(sampling_rate=0.01 + 1e-5 * i, noise_multiplier=1.0 + 0.01 * i, steps=5)
        for i in range(60)
    ]
    r = compute_epsilon(
        segs, DELTA, accountants=("rdp", "pld"), pld_discretization=1e-3, max_groups=8
    )
    assert "bracketed by 8 groups" in r.pld.details["grouping"] and r.rounding
    assert r.pld.details["pairs_exact"] is False and r.tight is None
    total = sum(s.steps for s in segs)
    worst = Segment(
        sampling_rate=max(s.sampling_rate for s in segs), noise_multiplier=1.0, steps=total
    )
    best = Segment(
        sampling_rate=0.01, noise_multiplier=max(s.noise_multiplier for s in segs), steps=total
    )
    hi = compute_epsilon(worst, DELTA, accountants=("rdp", "pld"), pld_discretization=1e-3)
    lo = compute_epsilon(best, DELTA, accountants=("rdp", "pld"), pld_discretization=1e-3)
    for name in ("rdp", "pld"):
        assert getattr(lo, name).epsilon < getattr(r, name).epsilon <= getattr(hi, name).epsilon
    # RDP on 32 rounded groups (the most it composes) is below the 8-group one, but close
    exact = compute_epsilon(segs, DELTA, accountants=("rdp",), max_groups=1000).rdp.epsilon
    assert exact <= r.rdp.epsilon <= exact * 1.15


def test_pessimistic_groups_round_the_safe_way():
    from dpverify.accounting.accountants import pessimistic_groups

    groups = [((0.01 * (1 + i / 100), 1.0 + i / 50), 3) for i in range(50)]
    merged, rounded = pessimistic_groups(groups, 10)
    assert len(merged) <= 10 and rounded
    assert sum(c for _, c in merged) == 150
    assert pessimistic_groups(groups, 100) == (groups, False)
    lo_q = min(q for (q, _), _ in merged)
    hi_sigma = max(s for (_, s), _ in merged)
    assert lo_q >= 0.01 and hi_sigma <= 1.0 + 49 / 50


def test_tiny_noise_skips_the_tight_accountants():
    """PLD/PRV grids grow like 1/σ²: below σ = 0.1 they are not run (RDP still answers).

    The reasons show the skip path was taken; its speed is measured in
    benchmarks/accounting_guards.py, not here (no wall-clock limits in tests)."""
    r = compute_epsilon(Segment(sampling_rate=0.01, noise_multiplier=0.02, steps=1000), DELTA)
    assert r.rdp.epsilon > 1e5
    for res in (r.pld, r.prv):
        assert res.epsilon is None and "noise_multiplier 0.02 < 0.1" in res.reason
    from dpverify.accounting import compute_delta

    d = compute_delta(Segment(sampling_rate=0.01, noise_multiplier=0.02, steps=10), 1.0)
    assert d.deltas["pld"] is None and "not run" in d.reasons["pld"]


def test_infinite_pld_at_tiny_delta_says_why():
    r = compute_epsilon(
        Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10), 1e-300, accountants="pld"
    )
    # ∞ from a tight accountant is "unavailable", never a bound (issue 10, item 4)
    assert r.pld.epsilon is None and "unavailable" in r.pld.reason
    assert "not a bound" in r.pld.reason
    assert (
        r.to_json()["pld"] is None and "noise_multiplier = 0" not in r.to_json()["reasons"]["pld"]
    )


def test_astronomical_epsilon_skips_the_tight_accountants():
    """10⁹ steps: PLD ran for minutes; with RDP alongside (the default) it is not run
    (speed: benchmarks/accounting_guards.py)."""
    r = compute_epsilon(Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10**9), DELTA)
    assert r.rdp.epsilon > 1e4
    for res in (r.pld, r.prv):
        assert res.epsilon is None and "RDP bounds ε by" in res.reason


def test_compute_delta_shares_the_grouping_and_the_limits_of_compute_epsilon():
    """Issue 15.16: compute_delta re-implemented RDP/PLD and skipped the grouping and the ε cap."""
    segs = [
        Segment(sampling_rate=0.01, noise_multiplier=1.0 + 0.01 * i, steps=5) for i in range(40)
    ]
    exact = compute_delta(segs, 2.0, accountants=("rdp",), max_groups=100)
    grouped = compute_delta(segs, 2.0, accountants=("rdp", "pld"), max_groups=4)
    assert "bracketed by 4 groups" in grouped.details["rdp"]["grouping"]
    assert grouped.deltas["rdp"] >= exact.deltas["rdp"]  # the dominating groups: an upper bound
    eps = compute_epsilon(segs, grouped.deltas["pld"], accountants="pld", max_groups=4)
    assert eps.pld.epsilon == pytest.approx(2.0, abs=2e-3)  # same groups, inverse functions
    huge = compute_delta(Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10**9), 10.0)
    for name in ("pld", "prv"):
        assert huge.deltas[name] is None and "RDP bounds ε by" in huge.reasons[name]
    assert huge.deltas["rdp"] == 1.0 or huge.deltas["rdp"] > 0.5
