"""dp-accounting's PLD of many distinct Poisson-subsampled Gaussians, built fast.

dp-accounting builds the PLD of one PoissonSampled(q, Gaussian(σ)) step by the
connect-the-dots algorithm (Doroshenko, Ghazi, Kamath, Kumar & Manurangsi,
"Connect the Dots: Tighter Discrete Approximations of Privacy Loss
Distributions", PoPETs 2022, arXiv:2207.04380): it evaluates the mechanism's
hockey-stick divergence δ(ε) at every grid point ε = k·h between the loss's
truncation bounds, then turns those values into a pessimistic PMF.  Almost all
of its time (~0.1–0.25 s per (q, σ) at h = 1e-3) goes into one Python call of
``inverse_privacy_loss`` per grid point.  A run whose σ decays or whose q warms
up has a distinct (q, σ) at every step, so that per-pair cost made the exact
per-step composition of 1 000 steps take ~90 s.

:class:`_VectorGaussianLoss` is dp-accounting's own ``GaussianPrivacyLoss``
with *only* ``get_delta_for_epsilon`` replaced by a vectorised evaluation of
the same closed forms (the inverse privacy loss of the subsampled Gaussian,
then ``mu_upper_cdf(x) − e^ε·mu_lower_cdf(x)`` from the library's own CDFs).
Everything else — truncation bounds, the connect-the-dots PMF, the
``PrivacyLossDistribution`` and its FFT composition with tail truncation — is
dp-accounting's code, so the composed PLD is the library's pessimistic
estimate, a valid upper bound on δ(ε) (hence on ε(δ)) up to its stated
truncation mass.  ``tests/accounting/test_fastpld.py`` checks that the PMFs
equal ``from_gaussian_mechanism``'s to 1e-12 and that composed ε equals
``PLDAccountant``'s on heterogeneous schedules.

Distinct PLDs are composed in a balanced tree (each convolution is
dp-accounting's ``compose``; composition is commutative and associative, so
the order changes only floating-point rounding and which tail mass is
truncated, always pessimistically).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["composed_pld", "subsampled_gaussian_pld"]


def _loss_class():
    import numpy as np
    from dp_accounting.pld import privacy_loss_mechanism as plm

    class _VectorGaussianLoss(plm.GaussianPrivacyLoss):
        """``GaussianPrivacyLoss`` whose ``get_delta_for_epsilon`` is vectorised (same formulas)."""

        def get_delta_for_epsilon(self, epsilon):
            if self.adjacency_type == plm.AdjacencyType.REPLACE or self.sensitivity != 1:
                return super().get_delta_for_epsilon(epsilon)
            scalar = np.ndim(epsilon) == 0
            eps = np.atleast_1d(np.asarray(epsilon, dtype=float))
            q, sigma2 = self.sampling_prob, self._standard_deviation**2
            deltas = np.zeros_like(eps)
            if q == 1.0:
                use = np.ones_like(eps, dtype=bool)
                loss_wo = eps
            elif self.adjacency_type == plm.AdjacencyType.REMOVE:
                use = eps > math.log1p(-q)
                deltas[~use] = -np.expm1(eps[~use])
                loss_wo = _log_a_exp_b_plus_c(1 / q, eps[use], 1 - 1 / q)
                loss_wo[np.isclose(eps[use], math.log(1 - q))] = -np.inf
            else:  # ADD
                use = eps < -math.log1p(-q)
                loss_wo = -_log_a_exp_b_plus_c(1 / q, -eps[use], 1 - 1 / q)
                loss_wo[np.isclose(eps[use], -math.log(1 - q))] = np.inf
            # _inverse_privacy_loss_without_subsampling_remove: -s/2 - loss·σ²/s (s = 1);
            # the ADD adjacency adds the sensitivity.
            with np.errstate(invalid="ignore"):
                x = -0.5 - loss_wo * sigma2
            if self.adjacency_type == plm.AdjacencyType.ADD:
                x = 1.0 + x
            with np.errstate(over="ignore", invalid="ignore"):
                deltas[use] = self.mu_upper_cdf(x) - np.exp(eps[use] + self.mu_lower_log_cdf(x))
            deltas = np.clip(np.nan_to_num(deltas, nan=0.0), 0, 1)
            return float(deltas[0]) if scalar else deltas

    return _VectorGaussianLoss


def _log_a_exp_b_plus_c(a: float, b, c: float):
    """``log(a·e^b + c)`` for ``a > 0 > c`` (dp-accounting's ``log_a_times_exp_b_plus_c``)."""
    import numpy as np

    d = b + math.log(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        return d + np.log1p(-np.exp(math.log(-c) - d))


_CLASS = None


def subsampled_gaussian_pld(
    sampling_rate: float,
    noise_multiplier: float,
    discretization: float,
    neighbouring: str = "add_remove",
):  # -> dp_accounting.pld.privacy_loss_distribution.PrivacyLossDistribution
    """dp-accounting's pessimistic connect-the-dots PLD of one PoissonSampled(q, Gaussian(σ)) step.

    Equal (to floating-point rounding) to ``from_gaussian_mechanism(σ,
    sampling_prob=q, value_discretization_interval=h)``.
    """
    global _CLASS
    from dp_accounting.pld import privacy_loss_distribution as pldm
    from dp_accounting.pld import privacy_loss_mechanism as plm

    if _CLASS is None:
        _CLASS = _loss_class()

    def one(adjacency):
        loss = _CLASS(
            noise_multiplier,
            sensitivity=1,
            pessimistic_estimate=True,
            log_mass_truncation_bound=-50,
            sampling_prob=sampling_rate,
            adjacency_type=adjacency,
        )
        return pldm._create_pld_pmf_from_monotone_privacy_loss(
            loss,
            pessimistic_estimate=True,
            value_discretization_interval=discretization,
            use_connect_dots=True,
        )

    if neighbouring == "replace_one":
        return pldm.PrivacyLossDistribution(one(plm.AdjacencyType.REPLACE))
    remove = one(plm.AdjacencyType.REMOVE)
    if sampling_rate == 1.0:
        return pldm.PrivacyLossDistribution(remove)
    return pldm.PrivacyLossDistribution(remove, one(plm.AdjacencyType.ADD))


def composed_pld(
    groups: Sequence[tuple[tuple[float, float], int]],
    discretization: float,
    neighbouring: str = "add_remove",
):  # -> PrivacyLossDistribution
    """The composition of ``count`` × PoissonSampled(q, Gaussian(σ)) over ``groups``.

    Each distinct pair's PLD is self-composed by dp-accounting (FFT power), and
    the pairs are composed in a balanced tree of dp-accounting ``compose`` calls.
    """
    layer = []
    for (q, sigma), count in groups:
        one = subsampled_gaussian_pld(q, sigma, discretization, neighbouring)
        layer.append(one.self_compose(int(count)) if count > 1 else one)
    if not layer:
        raise ValueError("no groups to compose")
    while len(layer) > 1:
        nxt = [layer[i].compose(layer[i + 1]) for i in range(0, len(layer) - 1, 2)]
        if len(layer) % 2:
            nxt.append(layer[-1])
        layer = nxt
    return layer[0]
