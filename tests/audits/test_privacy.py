"""Privacy check: ε over executed steps at the claimed δ, judged against the claim."""

import dataclasses

import numpy as np
import pytest

from audits.privacy import check_privacy, claimed_privacy
from dpverify.accounting import epsilon_poisson
from dpverify.ledger.records import Resume, Seal


def _eps(fakes, steps):
    h = fakes.make_header()
    return epsilon_poisson(h.sampling_rate, h.noise_multiplier, steps, h.delta, accountant="pld")


def test_claim_above_recomputed_epsilon_holds(fakes):
    ledger = fakes.make_ledger(20, header=fakes.make_header(claimed_epsilon=3.0))
    result, report = check_privacy(ledger)
    assert result.status == "pass", result.reason
    assert report.pld.epsilon < 3.0
    assert result.details["executed_steps"] == 20 and result.details["repeated_steps"] == 0


def test_claim_below_recomputed_epsilon_is_refuted(fakes):
    low = 0.5 * _eps(fakes, 20)
    ledger = fakes.make_ledger(20, header=fakes.make_header(claimed_epsilon=low))
    result, _ = check_privacy(ledger)
    assert result.status == "fail" and "is below the recomputed" in result.reason


def _restarted(fakes, claim):
    base = fakes.make_ledger(20, sealed=False)
    header = fakes.make_header(claimed_epsilon=claim)
    rng = np.random.default_rng(3)
    again = [fakes.honest_step(header, t, rng) for t in range(10, 20)]
    records = (header, *base.records[1:], Resume(step=10), *again)
    return fakes.FakeLedger(header=header, records=records)


def test_repeated_steps_count(fakes):
    claim = _eps(fakes, 20)  # honest for 20 steps, too low for 30 executed
    result, _ = check_privacy(_restarted(fakes, claim))
    assert result.status == "fail", result.reason
    assert "30 executed steps (10 repeated after resumes)" in result.reason
    assert "repeated after resumes were not counted in it" in result.reason
    assert result.details["holds_for_logical_steps_only"] is True


def test_claim_too_low_even_without_repeats_is_not_blamed_on_the_restart(fakes):
    result, _ = check_privacy(_restarted(fakes, 0.5 * _eps(fakes, 20)))
    assert result.status == "fail" and "30 executed steps" in result.reason
    assert "not counted" not in result.reason


def test_seal_claim_is_used(fakes):
    ledger = fakes.make_ledger(5, sealed=False)
    sealed = fakes.FakeLedger(
        header=ledger.header,
        records=(*ledger.records, Seal(steps_executed=5, final_step=5, claimed_epsilon=0.01)),
    )
    assert claimed_privacy(sealed) == (0.01, 1e-5)
    assert check_privacy(sealed)[0].status == "fail"


def test_no_claim_is_skipped_but_epsilon_reported(fakes):
    ledger = fakes.make_ledger(5, header=fakes.make_header(claimed_epsilon=None))
    result, report = check_privacy(ledger)
    assert result.status == "skip" and "claims no ε" in result.reason
    assert report.pld.epsilon is not None


@pytest.mark.parametrize("sampler", ["shuffle", "balls_in_bins", "shuffle_binomial"])
def test_samplers_without_an_upper_bound_are_unverifiable_with_lower_bound(fakes, sampler):
    """Not refuted (no accountant gives an upper bound), unless below the lower bound."""
    ledger = fakes.make_ledger(50, header=fakes.make_header(sampler=sampler, claimed_epsilon=50.0))
    result, _ = check_privacy(ledger)
    assert result.status == "fail" and result.details["unverifiable"]
    assert f"no accountant gives an upper bound for sampler {sampler!r}" in result.reason
    lower = result.details["shuffle_lower_bound"]
    if sampler == "shuffle":
        # the lower-bound construction is valid for plain shuffling only
        assert lower > result.details["poisson_epsilon"]
        assert "shuffled DP-SGD has ε ≥" in result.reason
        low = fakes.make_ledger(
            50, header=fakes.make_header(sampler=sampler, claimed_epsilon=lower / 2)
        )
        below, _ = check_privacy(low)
        assert below.status == "fail" and not below.details.get("unverifiable")
        assert "below the lower bound" in below.reason
    else:
        assert lower is None and "no lower bound is computed" in result.reason


def test_fixed_size_is_accounted_under_replace_one_only(fakes):
    header = fakes.make_header(sampler="fixed_size", claimed_epsilon=50.0)
    result, _ = check_privacy(fakes.make_ledger(30, header=header))
    assert result.status == "fail" and "no accountant bounds ε" in result.reason
    assert result.details["unverifiable"]
    header = fakes.make_header(
        sampler="fixed_size", neighbouring="replace_one", claimed_epsilon=50.0
    )
    result, report = check_privacy(fakes.make_ledger(30, header=header))
    assert report.rdp.epsilon is not None, report.to_json()
    assert result.status == "pass", result.reason


def test_poisson_run_declaring_replace_one_is_accounted_under_it(fakes):
    add_remove = fakes.make_ledger(30, header=fakes.make_header(claimed_epsilon=50.0))
    replace = fakes.make_ledger(
        30, header=fakes.make_header(neighbouring="replace_one", claimed_epsilon=50.0)
    )
    (r_add, rep_add), (r_rep, rep_rep) = check_privacy(add_remove), check_privacy(replace)
    assert r_add.status == r_rep.status == "pass", r_rep.reason
    assert rep_rep.neighbouring == "replace_one" and r_rep.details["neighbouring"] == "replace_one"
    assert rep_rep.rdp.epsilon is None and rep_rep.prv.epsilon is None  # PLD only
    assert rep_rep.pld.epsilon > rep_add.pld.epsilon


def test_a_claim_at_delta_not_below_one_over_n_is_unverifiable(fakes):
    """'ε = 0 at δ = 0.5' (in the seal) is not a meaningful guarantee: never certified."""
    ledger = fakes.make_ledger(5, sealed=False)
    seal = Seal(steps_executed=5, final_step=5, claimed_epsilon=0.0, delta=0.5)
    sealed = dataclasses.replace(ledger, records=(*ledger.records, seal))
    result, _ = check_privacy(sealed)
    assert result.status == "fail" and result.details["unverifiable"]
    assert "not a meaningful guarantee" in result.reason and "δ = 0.5" in result.reason


@pytest.mark.parametrize("claimed", [0.5, 100.0])
def test_a_claim_at_delta_zero_is_refuted(fakes, claimed):
    """No finite ε holds at δ = 0 for Gaussian noise: refuted (not unverifiable, not an error)."""
    ledger = fakes.make_ledger(5, sealed=False)
    seal = Seal(steps_executed=5, final_step=5, claimed_epsilon=claimed, delta=0.0)
    sealed = dataclasses.replace(ledger, records=(*ledger.records, seal))
    result, report = check_privacy(sealed)
    assert result.status == "fail" and not result.details.get("unverifiable")
    assert "δ = 0 cannot hold" in result.reason and report is None


def test_tiny_delta_pld_infinite_is_unavailable_and_rdp_confirms(fakes):
    """δ ≤ 1e-15: PLD returns ∞; a claim at or above RDP's bound holds."""
    from dpverify import accounting

    header = fakes.make_header(delta=1e-16, claimed_epsilon=None)
    ledger = fakes.make_ledger(20, header=header)
    _, report = check_privacy(ledger)
    rdp = report.rdp.epsilon
    assert report.pld.epsilon is None and "not a bound" in report.pld.reason
    claimed = fakes.make_ledger(20, header=fakes.make_header(delta=1e-16, claimed_epsilon=rdp))
    result, _ = check_privacy(claimed)
    assert result.status == "pass", result.reason
    assert accounting.check_claim(report, rdp).holds


def test_unverified_per_step_rates_are_not_trusted(fakes):
    """Honest batches at q recorded as q/10 are never accounted at q/10 unless verified."""
    import dataclasses as dc

    header = fakes.make_header(claimed_epsilon=None)
    ledger = fakes.make_ledger(40, header=header)
    low = dc.replace(
        ledger,
        records=(
            ledger.records[0],
            *[dc.replace(s, sampling_rate=header.sampling_rate / 10) for s in ledger.steps],
            *ledger.records[1 + len(ledger.steps) :],
        ),
    )
    _, honest = check_privacy(ledger)
    result, untrusted = check_privacy(low)
    assert untrusted.pld.epsilon == honest.pld.epsilon
    assert result.details["steps_raised_to_header_rate"] == 40
    _, trusted = check_privacy(low, rates_verified=True)
    assert trusted.pld.epsilon < honest.pld.epsilon / 3


def test_fixed_size_is_accounted_at_the_batches_recorded_not_a_smaller_declaration(fakes):
    """A `batch_size` of 1 declared while batches of ~20 were drawn is not accounted at 1."""
    header = fakes.make_header(
        sampler="fixed_size",
        neighbouring="replace_one",
        sampler_params={"batch_size": 1},
        claimed_epsilon=None,
    )
    honest = fakes.make_header(
        sampler="fixed_size",
        neighbouring="replace_one",
        sampler_params={"batch_size": 20},
        claimed_epsilon=None,
    )
    ledger = fakes.make_ledger(30, header=header)
    largest = max(s.batch_size for s in ledger.steps)
    assert largest > 20  # fixed seed: Binomial(1000, 0.02) batches
    _, report = check_privacy(ledger)
    _, reference = check_privacy(fakes.make_ledger(30, header=honest))
    assert report.rdp.epsilon >= reference.rdp.epsilon
    from dpverify import accounting

    at_one = accounting.compute_epsilon(
        accounting.segments_from_ledger(ledger),
        1e-5,
        neighbouring="replace_one",
        sampler="fixed_size",
        sampler_params={"batch_size": 1, "dataset_size": 1000},
        accountants="rdp",
    )
    assert report.rdp.epsilon > 3 * at_one.rdp.epsilon


def _decaying_ledger(fakes, claim, steps=1000):
    """σ linear 1.5 → 0.8 over ``steps`` at q = 0.01, per-step σ recorded (the stored schedule)."""
    from dpverify.ledger.records import Seal

    header = fakes.make_header(
        dataset_size=10_000, sampling_rate=0.01, noise_multiplier=1.5, claimed_epsilon=claim
    )
    rng = np.random.default_rng(5)
    records = [header]
    for t in range(steps):
        sigma = 1.5 - 0.7 * t / (steps - 1)
        records.append(
            fakes.honest_step(header, t, rng, noise_multiplier=sigma, noise_std=sigma * 1.0)
        )
    records.append(Seal(steps_executed=steps, final_step=steps))
    return fakes.FakeLedger(header=header, records=tuple(records))


def _exact_decay():
    import json
    from pathlib import Path

    ref = Path(__file__).parents[1] / "accounting" / "heterogeneous_reference.json"
    return json.loads(ref.read_text())["cases"]["sigma_decay_1.5_to_0.8"]["pld_epsilon"]


@pytest.mark.slow
def test_sigma_decay_claimed_at_the_exact_composition_is_certified_and_2pc_below_refuted(fakes):
    """Issue 10.10: 1 000 distinct σ, claim = dp-accounting's exact per-step composition."""
    from dpverify.accounting import compute_epsilon

    seen: list = []

    def once(*args, **kwargs):  # both claims share one schedule: account it once
        if not seen or seen[0][:2] != (args, kwargs):
            seen[:] = [(args, kwargs, compute_epsilon(*args, **kwargs))]
        return seen[0][2]

    exact = _exact_decay()
    result, report = check_privacy(_decaying_ledger(fakes, exact), epsilon_of=once)
    assert result.status == "pass", result.reason
    assert "rounded" in result.reason  # RDP and PRV used rounded groups: said so
    assert report.pld.details["pairs_exact"] and abs(report.pld.epsilon - exact) < 5e-3 * exact
    low, _ = check_privacy(_decaying_ledger(fakes, 0.98 * exact), epsilon_of=once)
    assert low.status == "fail" and not low.details.get("unverifiable"), low.reason
    assert "rounded" in low.reason and low.details["reference"] == "pld"


def test_a_refutation_never_rests_on_rounded_groups(fakes):
    """PLD rounded into few groups (an upper bound only): a claim below it is not refuted."""
    from dpverify.accounting import Segment, compute_epsilon

    sigmas = [1.5 - 0.7 * t / 119 for t in range(120)]
    segments = [Segment(sampling_rate=0.01, noise_multiplier=s, steps=1) for s in sigmas]
    exact = compute_epsilon(segments, 1e-5, accountants=("pld",)).pld.epsilon
    claim = 0.99 * exact
    result, report = check_privacy(_decaying_ledger(fakes, claim, steps=120), max_groups=8)
    assert report.pld.details["pairs_exact"] is False and report.pld.epsilon > exact
    assert result.status == "fail" and result.details["unverifiable"], result.reason
    assert "rounded" in result.reason


def test_per_step_sigma_above_the_header_is_stated(fakes):
    """ε is accounted with the recorded σ, and the reason says they depart from the header."""
    ledger = fakes.make_ledger(20, header=fakes.make_header(claimed_epsilon=3.0))
    h = ledger.header
    steps = [dataclasses.replace(s, noise_multiplier=5 * h.noise_multiplier) for s in ledger.steps]
    records = [r for r in ledger.records if r not in ledger.steps]
    bumped = dataclasses.replace(ledger, records=(*records[:1], *steps, *records[1:]))
    result, _ = check_privacy(bumped)
    assert "σ as recorded per step" in result.reason and "20 above the header's" in result.reason
    assert "only replay verifies" in result.reason
    plain, _ = check_privacy(ledger)
    assert "σ as recorded" not in plain.reason


def test_cyclic_poisson_states_the_zero_out_adjacency_it_covers(fakes):
    """Equal groups drawn once: the bound is for zero-out neighbours, and the reason says so."""
    header = fakes.make_header(
        sampler="cyclic_poisson", sampler_params={"cycle_length": 4}, claimed_epsilon=50.0
    )
    result, _ = check_privacy(fakes.make_ledger(20, header=header))
    assert result.status == "pass"
    assert "zero-out" in result.reason and result.details["adjacency"] == "zero_out"
    plain, _ = check_privacy(fakes.make_ledger(20, header=fakes.make_header(claimed_epsilon=50.0)))
    assert "zero-out" not in plain.reason and "adjacency" not in plain.details
