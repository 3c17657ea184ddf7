"""shuffle_lower_bound: a valid lower bound, sandwiched by known values."""

import math

import pytest
from scipy.stats import norm

from dpverify.accounting import epsilon_poisson, shuffle_lower_bound
from dpverify.accounting.shuffle import shuffle_delta_lower_bound
from dpverify.errors import InvalidArgument


def gaussian_epsilon(sigma, delta):
    """Exact ε(δ) of the Gaussian mechanism with sensitivity 1 (Balle & Wang 2018)."""
    from scipy.optimize import brentq

    def d(eps):
        return (
            norm.cdf(0.5 / sigma - eps * sigma)
            - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma)
            - delta
        )

    return brentq(d, 0.0, 500.0)


def test_architecture_sanity_figure():
    # Chua et al. (ICML 2024): σ = 0.8, 1000 steps, one epoch, δ = 1e-5 -> Poisson ≈ 0.31, shuffle ≥ 5.2
    lower = shuffle_lower_bound(1e-3, 0.8, 1000, 1e-5)
    assert lower == pytest.approx(5.2, abs=0.06)
    assert epsilon_poisson(1e-3, 0.8, 1000, 1e-5, "pld") == pytest.approx(0.30, abs=0.015)


@pytest.mark.parametrize(
    ("q", "sigma", "steps"), [(0.01, 1.0, 100), (0.01, 1.0, 300), (0.05, 2.0, 100)]
)
def test_below_the_no_amplification_upper_bound(q, sigma, steps):
    # Shuffling is never worse than releasing each epoch's batch deterministically:
    # E epochs of a sensitivity-1 Gaussian = one Gaussian with σ/√E (Chua et al. 2024).
    epochs = math.ceil(steps * q - 1e-9)
    lower = shuffle_lower_bound(q, sigma, steps, 1e-5)
    assert 0.0 < lower <= gaussian_epsilon(sigma / math.sqrt(epochs), 1e-5) + 1e-6


def test_more_epochs_never_lower_and_single_epoch_part_matches():
    one = shuffle_lower_bound(0.01, 1.0, 100, 1e-5)
    two = shuffle_lower_bound(0.01, 1.0, 200, 1e-5)
    partial = shuffle_lower_bound(0.01, 1.0, 150, 1e-5)
    assert one <= partial <= two
    # the single-epoch threshold test at ε = lower bound leaves δ ≈ target
    assert shuffle_delta_lower_bound(0.01, 1.0, 100, one) == pytest.approx(1e-5, rel=0.05)


def test_larger_delta_smaller_bound_and_partial_epoch_weight():
    assert shuffle_lower_bound(0.01, 1.0, 100, 1e-3) < shuffle_lower_bound(0.01, 1.0, 100, 1e-6)
    # drop_last: 9 batches of 0.1 = 90% of the data per epoch -> weaker attack
    full = shuffle_lower_bound(0.1, 1.0, 10, 1e-5)
    dropped = shuffle_lower_bound(0.1, 1.0, 9, 1e-5, steps_per_epoch=9)
    assert 0 < dropped <= full


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 1.0, 10, 1e-5), "sampling_rate"),
        ((0.1, 0.0, 10, 1e-5), "noise_multiplier"),
        ((0.1, 1.0, 0, 1e-5), "steps"),
        ((0.1, 1.0, 10, 1.0), "delta"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(InvalidArgument, match=match):
        shuffle_lower_bound(*args)
    with pytest.raises(InvalidArgument, match="steps_per_epoch"):
        shuffle_lower_bound(0.1, 1.0, 10, 1e-5, steps_per_epoch=11)


@pytest.mark.parametrize("sigma", [0.8, 2.0])
def test_full_batch_is_the_gaussian_mechanism_and_the_bound_is_tight(sigma):
    # q = 1: one batch per epoch, the pair is N(2, σ²) vs N(1, σ²): exactly the Gaussian
    # mechanism; E epochs compose to σ/√E.  The bound must be below and very close.
    for epochs in (1, 4):
        exact = gaussian_epsilon(sigma / math.sqrt(epochs), 1e-5)
        lower = shuffle_lower_bound(1.0, sigma, epochs, 1e-5)
        assert exact - 5e-3 <= lower <= exact + 1e-6


def test_tiny_noise_gives_a_capped_lower_bound_not_an_error():
    """One epoch at σ = 0.02 is not (10⁴, δ)-DP: the bound is returned, not a bracket error."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings leak to the CLI either
        assert shuffle_lower_bound(0.01, 0.02, 1000, 1e-5) > 1e4
