"""One-run auditing statistics (dpverify.empirical.one_run).

Statistical tests use fixed seeds.  Their false-positive rates are stated where
they are asserted: the bound may exceed the true ε with probability at most
1 − confidence (5 %); we assert the observed rate over a few hundred trials is
below 5 % plus three binomial standard deviations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dpverify.empirical import (
    OneRunAudit,
    audit_scores,
    correct_guesses,
    epsilon_from_counts,
    guess_family,
    p_value,
)
from dpverify.errors import InvalidArgument


def _rr_scores(rng, m, eps):
    """ε-DP randomized response on each bit (pure DP, the method's tight case)."""
    bits = rng.random(m) < 0.5
    keep = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
    return np.where(keep == bits, 1.0, -1.0), bits


def test_p_value_without_delta_is_the_binomial_tail():
    for m, r, v, eps in [(100, 50, 40, 1.0), (1000, 600, 600, 3.0), (10, 10, 5, 0.0)]:
        want = stats.binom.sf(v - 1, r, math.exp(eps) / (1 + math.exp(eps)))
        assert p_value(m, r, v, eps, 0.0) == pytest.approx(want, rel=1e-9)


def test_p_value_delta_term_by_hand():
    # m=4, r=2, v=2, ε=0: β(2)=1/4, β(1)=3/4, β(0)=1; α = max((3/4-1/4)/1, (1-1/4)/2) = 1/2.
    assert p_value(4, 2, 2, 0.0, 0.01) == pytest.approx(0.25 + 2 * 4 * 0.01 * 0.5)


def test_p_value_increases_with_epsilon_and_delta():
    eps = np.linspace(0, 8, 40)
    ps = [p_value(500, 200, 170, e, 1e-5) for e in eps]
    assert np.all(np.diff(ps) >= -1e-15)
    assert p_value(500, 200, 170, 1.0, 1e-3) >= p_value(500, 200, 170, 1.0, 1e-6)


def test_epsilon_from_counts_is_the_boundary():
    eps = epsilon_from_counts(1000, 600, 600, 1e-5, 0.05)
    assert 4.0 < eps < 7.0
    assert p_value(1000, 600, 600, eps, 1e-5) <= 0.05
    assert p_value(1000, 600, 600, eps + 1e-5, 1e-5) > 0.05
    assert epsilon_from_counts(100, 50, 25, 1e-5, 0.05) == 0.0  # chance level


def test_guess_family_depends_on_m_only_and_is_bounded():
    fam = guess_family(1000)
    assert fam == guess_family(1000, "two_sided")
    assert all(kp + kn <= 1000 and kp + kn > 0 for kp, kn in fam)
    assert len(fam) <= 40
    assert len(guess_family(7, "thresholds")) == 8
    assert all(kn == 0 for _, kn in guess_family(50, "one_sided"))


def test_correct_guesses_counts_both_ends_with_ties_by_position():
    scores = [3.0, 2.0, 2.0, 1.0, 0.0]
    bits = [True, False, True, False, False]
    assert correct_guesses(scores, bits, 1, 0) == 1
    assert correct_guesses(scores, bits, 2, 0) == 1  # tie: position 1 ranks before 2
    assert correct_guesses(scores, bits, 3, 2) == 2 + 2


def test_perfect_separation_gives_a_large_bound_and_reports_its_guess_set():
    rng = np.random.default_rng(1)
    bits = rng.random(1000) < 0.5
    res = audit_scores(bits * 10.0 + rng.normal(size=1000), bits, delta=1e-5)
    assert isinstance(res, OneRunAudit)
    assert res.epsilon_lower_bound > 3.0
    assert res.correct == res.guesses  # every guess right
    assert res.canaries == 1000 and res.included == int(bits.sum())
    assert res.to_json()["method"] == "steinke2023-one-run"


def test_no_signal_gives_zero():
    rng = np.random.default_rng(2)
    bits = rng.random(500) < 0.5
    assert audit_scores(rng.normal(size=500), bits, delta=1e-5).epsilon_lower_bound == 0.0
    assert audit_scores(np.zeros(500), bits, delta=1e-5).epsilon_lower_bound == 0.0


@pytest.mark.parametrize("eps_true", [1.0, 2.0])
def test_honest_rate_at_most_one_minus_confidence(eps_true):
    """Randomized response is exactly ε-DP; FPR bound 5 %, asserted < 5 % + 3 sd (300 trials)."""
    rng = np.random.default_rng(10 + int(eps_true))
    trials, m = 300, 200
    over = 0
    for _ in range(trials):
        scores, bits = _rr_scores(rng, m, eps_true)
        scores = scores + 1e-3 * rng.normal(size=m)  # break ties at random
        over += audit_scores(scores, bits, delta=0.0).epsilon_lower_bound > eps_true
    assert over / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_without_the_multiplicity_correction_the_rate_is_exceeded():
    """The shortcut (best of many guess sets, each at 5 %) over-reports on the same data."""
    rng = np.random.default_rng(3)
    trials, m, eps_true = 300, 200, 1.0
    family = guess_family(m, "thresholds")
    naive = corrected = 0
    for _ in range(trials):
        scores, bits = _rr_scores(rng, m, eps_true)
        scores = scores + rng.normal(size=m)  # a noisy score: many thresholds to choose from
        best = 0.0
        for kp, kn in family[1:]:
            v = correct_guesses(scores, bits, kp, kn)
            if 2 * v > kp + kn:
                best = max(best, epsilon_from_counts(m, kp + kn, v, 0.0, 0.05))
        naive += best > eps_true
        corrected += audit_scores(scores, bits, delta=0.0).epsilon_lower_bound > eps_true
    assert corrected / trials <= 0.05
    assert naive / trials > corrected / trials


def test_detects_a_mechanism_far_less_private_than_claimed():
    """ε = 6 randomized response against a claim of ε = 1: refuted in every trial."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        scores, bits = _rr_scores(rng, 1000, 6.0)
        assert audit_scores(scores, bits, delta=1e-5).epsilon_lower_bound > 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scores": [], "included": []},
        {"scores": [1.0, 2.0], "included": [True]},
        {"scores": [1.0, float("nan")], "included": [True, False]},
        {"scores": [1.0, 2.0], "included": [2, 0]},
        {"scores": [1.0, 2.0], "included": [1, 0], "delta": 1.5},
        {"scores": [1.0, 2.0], "included": [1, 0], "confidence": 1.0},
        {"scores": [1.0, 2.0], "included": [1, 0], "guesses": "best"},
    ],
)
def test_bad_input_is_one_clear_error(kwargs):
    kwargs = {"delta": 1e-5, **kwargs}
    with pytest.raises(InvalidArgument):
        audit_scores(**kwargs)


class TestAgainstJaxPrivacy:
    """Cross-check with jax_privacy.auditing on the same scores (when installed)."""

    @pytest.fixture(autouse=True)
    def _jp(self):
        self.jp = pytest.importorskip("jax_privacy.auditing")

    @pytest.mark.parametrize("seed,shift,delta", [(0, 1.0, 1e-5), (1, 3.0, 1e-6), (2, 0.3, 0.0)])
    def test_fixed_threshold_matches(self, seed, shift, delta):
        rng = np.random.default_rng(seed)
        m = 400
        bits = rng.random(m) < 0.5
        scores = rng.normal(size=m) + shift * bits
        auditor = self.jp.CanaryScoreAuditor(scores[bits], scores[~bits])
        for threshold in np.quantile(scores, [0.5, 0.8, 0.95]):
            k = int(np.sum(scores >= threshold))
            v = correct_guesses(scores, bits, k, 0)
            ours = epsilon_from_counts(m, k, v, delta, 0.05)
            if delta == 0.0:
                # jax_privacy requires delta > 0; at 1e-300 its δ term is nil.
                delta_jp = 1e-300
            else:
                delta_jp = delta
            theirs = auditor.epsilon_one_run(
                0.05, delta_jp, threshold_strategy=self.jp.Explicit(float(threshold))
            )
            assert ours == pytest.approx(theirs, abs=2e-5)

    def test_all_thresholds_never_above_jax_privacy_bonferroni(self):
        rng = np.random.default_rng(5)
        for shift in (0.5, 2.0, 5.0):
            bits = rng.random(300) < 0.5
            scores = rng.normal(size=300) + shift * bits
            ours = audit_scores(scores, bits, delta=1e-5, guesses="thresholds")
            theirs = self.jp.CanaryScoreAuditor(scores[bits], scores[~bits]).epsilon_one_run(
                0.05, 1e-5
            )
            # Same p-values; ours divides by m + 1 thresholds, theirs by the ROC hull's.
            assert ours.epsilon_lower_bound <= theirs + 2e-5
            assert (ours.epsilon_lower_bound > 0) == (theirs > 0) or shift < 1.0
