"""The fast PLD builder equals dp-accounting's own PLD, pair by pair and composed."""

import numpy as np
import pytest

from dpverify.accounting._fastpld import composed_pld, subsampled_gaussian_pld


@pytest.mark.parametrize(
    ("q", "sigma", "h"),
    [(0.01, 0.9, 1e-3), (0.001, 1.3, 1e-4), (1.0, 1.0, 1e-3), (0.3, 0.6, 1e-3), (0.05, 4.0, 1e-3)],
)
def test_each_pair_equals_from_gaussian_mechanism(q, sigma, h):
    from dp_accounting.pld import privacy_loss_distribution as pld

    ref = pld.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=h)
    ours = subsampled_gaussian_pld(q, sigma, h)
    for attr in ("_pmf_remove", "_pmf_add"):
        a, b = getattr(ref, attr), getattr(ours, attr)
        assert type(a) is type(b)
        pa, pb = _as_dict(a), _as_dict(b)
        assert pa.keys() == pb.keys()
        np.testing.assert_allclose([pb[k] for k in pa], list(pa.values()), rtol=0, atol=1e-12)
        assert a._infinity_mass == pytest.approx(b._infinity_mass, abs=1e-15)


def _as_dict(pmf):
    if hasattr(pmf, "_loss_probs"):  # SparsePLDPmf
        return dict(pmf._loss_probs)
    return {pmf._lower_loss + i: p for i, p in enumerate(pmf._probs)}


def test_heterogeneous_composition_equals_pld_accountant():
    """24 distinct (q, σ) pairs (some repeated): ε and δ equal PLDAccountant's on the same event."""
    import dp_accounting as dpa

    groups = [((min(0.02, 0.004 + 0.002 * k), 1.4 - 0.025 * k), 1 + k % 3) for k in range(24)]
    event = dpa.ComposedDpEvent(
        [
            dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(s)), c)
            for (q, s), c in groups
        ]
    )
    acc = dpa.pld.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(event)
    ours = composed_pld(groups, 1e-3)
    assert ours.get_epsilon_for_delta(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert ours.get_delta_for_epsilon(1.0) == pytest.approx(acc.get_delta(1.0), rel=1e-7)


def test_a_shifted_pair_is_not_equal():
    """The comparison above can fail: a slightly different σ gives a different PMF."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    ref = pld.from_gaussian_mechanism(0.9, sampling_prob=0.01, value_discretization_interval=1e-3)
    ours = subsampled_gaussian_pld(0.01, 0.9 * (1 + 1e-3), 1e-3)
    a, b = _as_dict(ref._pmf_remove), _as_dict(ours._pmf_remove)
    assert a.keys() != b.keys() or max(abs(a[k] - b[k]) for k in a) > 1e-9
