"""Mechanics check: σ·C noise, clipping before summation, one draw, denominator."""

import math

import pytest

from audits.mechanics import check_mechanics


def test_honest_steps_pass(fakes):
    ledger = fakes.make_ledger(15)
    r = check_mechanics(ledger.header, ledger.steps)
    assert r.status == "pass", r.reason
    assert "not recorded" not in r.reason


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"noise_std": 1.1 / 2}, "noise std is not σ·C"),
        ({"max_clipped_norm": 1.7}, "clipping at a larger norm than recorded?"),
        ({"max_clipped_norm": 3.0}, "clipping after summation?"),
        ({"max_clipped_norm": math.nan}, "clipping after summation?"),
        ({"noise_draws": 3}, "noise per physical batch?"),
        ({"num_clipped": 10_000}, "more examples clipped than sampled"),
    ],
)
def test_each_violation_fails_in_plain_words(fakes, overrides, words):
    ledger = fakes.make_ledger(6, step_overrides=overrides)
    r = check_mechanics(ledger.header, ledger.steps)
    assert r.status == "fail"
    assert words in r.reason and "at 6 of 6 steps (step 0" in r.reason


def test_noise_std_sigma_instead_of_sigma_c_is_named(fakes):
    header = fakes.make_header(clip_norm=2.0, noise_multiplier=1.1)
    ledger = fakes.make_ledger(4, header=header, step_overrides={"noise_std": 1.1})
    r = check_mechanics(header, ledger.steps)
    assert r.status == "fail" and "noise std is σ, not σ·C" in r.reason


def test_float32_rounding_is_tolerated(fakes):
    overrides = {"noise_std": 1.1 * (1 + 3e-7), "max_clipped_norm": 1.0 + 3e-6}
    ledger = fakes.make_ledger(4, step_overrides=overrides)
    assert check_mechanics(ledger.header, ledger.steps).status == "pass"


def test_per_step_values_are_checked_against_the_steps_own_sigma(fakes):
    ledger = fakes.make_ledger(3, step_overrides={"noise_multiplier": 2.0, "noise_std": 2.0})
    r = check_mechanics(ledger.header, ledger.steps)
    assert r.status == "pass"
    assert r.details["steps_with_other_noise_multiplier"] == 3


def test_unrecorded_fields_warn_and_claim_nothing_unchecked(fakes):
    unknown = dict(noise_std=None, noise_draws=None, max_clipped_norm=None, denominator=None)
    ledger = fakes.make_ledger(3, step_overrides=unknown)
    r = check_mechanics(ledger.header, ledger.steps)
    assert r.status == "warn" and "not recorded (unchecked)" in r.reason
    assert "taken as declared" in r.reason
    # nothing that was not recorded is claimed as verified
    for claim in ("one noise draw per step", "clipped norms ≤ C", "noise std σ·C"):
        assert f"verified {claim}" not in r.reason and f", {claim}" not in r.reason


def test_partly_recorded_fields_say_which_were_verified(fakes):
    ledger = fakes.make_ledger(3, step_overrides=dict(noise_draws=None))
    r = check_mechanics(ledger.header, ledger.steps)
    assert r.status == "warn" and "noise_draws at 3 steps" in r.reason
    assert "verified noise std σ·C" in r.reason and "one noise draw" not in r.reason


def test_no_steps_is_skipped(fakes):
    assert check_mechanics(fakes.make_header(), ()).status == "skip"


# --- denominators (issue 10, item 7): any public constant passes, one that tracks L refutes


def test_a_constant_denominator_other_than_qn_warns_not_fails(fakes):
    """Opacus divides by int(q·N): a public constant only rescales the learning rate."""
    header = fakes.make_header(dataset_size=1000, sampling_rate=0.0255)  # q·N = 25.5
    ledger = fakes.make_ledger(6, header=header, step_overrides={"denominator": 25.0})
    r = check_mechanics(header, ledger.steps)
    assert r.status == "warn", r.reason
    assert "int(q·N), as Opacus divides" in r.reason and "only rescales" in r.reason
    other = fakes.make_ledger(6, header=header, step_overrides={"denominator": 17.0})
    assert check_mechanics(header, other.steps).status == "warn"


def test_a_denominator_equal_to_qn_passes(fakes):
    header = fakes.make_header(dataset_size=1000, sampling_rate=0.02)
    ledger = fakes.make_ledger(4, header=header, step_overrides={"denominator": 20.0})
    r = check_mechanics(header, ledger.steps)
    assert r.status == "pass" and "public constant (20)" in r.reason


def test_a_denominator_that_tracks_the_batch_size_fails(fakes):
    import dataclasses

    ledger = fakes.make_ledger(8)
    steps = [dataclasses.replace(s, denominator=float(max(1, s.batch_size))) for s in ledger.steps]
    assert len({s.batch_size for s in steps}) > 1
    r = check_mechanics(ledger.header, steps)
    assert r.status == "fail"
    assert "denominator tracks the realised batch size" in r.reason
    assert "depend on private data" in r.reason


def test_a_denominator_that_changes_for_no_public_reason_fails(fakes):
    import dataclasses

    ledger = fakes.make_ledger(4)
    steps = [dataclasses.replace(s, denominator=20.0 + (s.step == 2) * 3.0) for s in ledger.steps]
    r = check_mechanics(ledger.header, steps)
    assert r.status == "fail" and "denominator is not a public constant" in r.reason
    assert "step 2" in r.reason


def test_a_denominator_following_a_public_per_step_rate_passes(fakes):
    import dataclasses

    ledger = fakes.make_ledger(4)
    rates = [0.01, 0.01, 0.02, 0.02]
    steps = [
        dataclasses.replace(s, sampling_rate=q, denominator=q * 1000)
        for s, q in zip(ledger.steps, rates, strict=True)
    ]
    r = check_mechanics(ledger.header, steps)
    assert r.status == "pass" and "q_t·N" in r.reason


def test_clipping_at_a_larger_norm_is_told_apart_from_clipping_after_summation(fakes):
    # Clipped norms above C but below the pre-clip norms: examples were clipped, at 2·C.
    over = {"max_clipped_norm": 2.0, "max_grad_norm": 3.5}
    ledger = fakes.make_ledger(4, step_overrides=over)
    r = check_mechanics(ledger.header, ledger.steps)
    assert r.status == "fail" and "clipping at a larger norm than recorded?" in r.reason
    assert "clipping after summation?" not in r.reason
    # Clipped = pre-clip: no per-example clipping happened.
    same = {"max_clipped_norm": 3.5, "max_grad_norm": 3.5}
    r = check_mechanics(ledger.header, fakes.make_ledger(4, step_overrides=same).steps)
    assert "clipping after summation?" in r.reason


def test_nonfinite_examples_are_reported_not_refuted(fakes):
    ledger = fakes.make_ledger(5, step_overrides={"num_nonfinite": 1})
    r = check_mechanics(ledger.header, ledger.steps)
    assert r.status == "pass", r.reason
    assert "5 non-finite example(s) in 5 step(s) contributed zero" in r.reason
    assert r.details["nonfinite_examples"] == 5
    bad = fakes.make_ledger(2, step_overrides={"num_nonfinite": 10_000})
    assert "more non-finite examples than sampled" in check_mechanics(bad.header, bad.steps).reason
