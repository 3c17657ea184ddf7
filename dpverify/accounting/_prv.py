"""PRV accountant (Gopi, Lee & Wutschitz 2021) on an FFT-friendly grid.

:class:`prv_accountant.PRVAccountant` discretises each privacy random variable
on a grid of ``2L/h`` points (mesh ``h`` from Theorem 5.5 of the paper, domain
``[-L, L]`` from its Remark 5.6) and self-composes by FFT in extended
precision.  The grid size it picks is whatever ``2L/h`` happens to be, and when
that number has a large prime factor the long-double FFT is ~10× slower than at
the next 5-smooth size.  We build the accountant from the library's own parts
(its domain-size rule, mesh rule, truncation, cell-centred discretiser and
heterogeneous composer) and only widen the domain to the next fast FFT length:
a wider domain keeps the same mesh (so the same ``eps_error`` guarantee) and
truncates less mass, so the bound stays valid.  ``tests/accounting`` checks the
result against :class:`prv_accountant.PRVAccountant` itself.

References:
    Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential Privacy",
    NeurIPS, arXiv:2106.02848.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["MAX_GRID_POINTS", "GridTooLarge", "prv_delta_bounds", "prv_epsilon_bounds", "prv_mechanism"]

#: Refuse grids larger than this (memory: 16 bytes per long-double point, several copies).
MAX_GRID_POINTS = 20_000_000


def prv_mechanism(sampling_rate: float, noise_multiplier: float):  # -> PrivacyRandomVariable
    """The PRV of one Poisson-subsampled Gaussian step (plain Gaussian when q = 1)."""
    import prv_accountant

    if sampling_rate >= 1.0:
        return prv_accountant.GaussianMechanism(noise_multiplier=noise_multiplier)
    return prv_accountant.PoissonSubsampledGaussianMechanism(
        sampling_probability=sampling_rate, noise_multiplier=noise_multiplier
    )


class GridTooLarge(MemoryError):
    """The PRV grid needed for the requested errors exceeds :data:`MAX_GRID_POINTS`."""


def _compose(
    prvs: Sequence[object], counts: Sequence[int], eps_error: float, delta_error: float
):  # -> DiscretePrivacyRandomVariable
    """Compose ``counts[i]`` copies of ``prvs[i]`` on one grid, by a product in Fourier space.

    Every PRV is discretised on the same domain, so the composition's PMF is
    the inverse FFT of the product of the PRVs' FFTs raised to their counts —
    the library's ``Fourier`` self-composer, generalised from one PRV to many
    (Gopi et al. 2021, Algorithm 1 applies to heterogeneous compositions; the
    mesh of their Theorem 5.5 depends only on the total count).  One FFT per
    distinct PRV and one inverse FFT in all, where the library's
    ``Heterogeneous`` composer adds a convolution tree over the distinct PRVs.
    """
    import numpy as np
    from prv_accountant import discretisers
    from prv_accountant.accountant import compute_safe_domain_size
    from prv_accountant.discrete_privacy_random_variable import DiscretePrivacyRandomVariable
    from prv_accountant.domain import Domain
    from prv_accountant.privacy_random_variables import PrivacyRandomVariableTruncated
    from scipy.fft import irfft, next_fast_len, rfft

    counts = [int(c) for c in counts]
    total = sum(counts)
    half_width = compute_safe_domain_size(
        list(prvs), counts, eps_error=eps_error, delta_error=delta_error
    )
    mesh = eps_error / math.sqrt(total / 2 * math.log(12 / delta_error))
    # Domain.create_aligned(-L, L, h) gives t_min = -k h, t_max = (k + 1) h, 2k + 2 points.
    k = math.ceil(half_width / mesh)
    size = next_fast_len(2 * k + 2, real=True)
    while size % 2:
        size = next_fast_len(size + 1, real=True)
    if size > MAX_GRID_POINTS:
        raise GridTooLarge(
            f"the PRV grid would need {size} points (> {MAX_GRID_POINTS}); "
            "use a larger eps_error or another accountant"
        )
    k = (size - 2) // 2
    domain = Domain(-k * mesh, (k + 1) * mesh, size)
    assert abs(domain.dt() - mesh) / mesh < 1e-8
    spectrum = None
    shift = 0.0
    log_pmc_inf = 0.0
    for prv, count in zip(prvs, counts, strict=True):
        truncated = PrivacyRandomVariableTruncated(prv, domain.t_min(), domain.t_max())
        discrete = discretisers.CellCentred().discretise(truncated, domain)
        part = rfft(discrete.pmf) ** count
        spectrum = part if spectrum is None else spectrum * part
        shift += discrete.domain.shifts() * count
        log_pmc_inf += discrete.log_pmc_inf * count
    pmf = irfft(spectrum, n=size)
    # index i of one PRV is t_min + i·h; a sum of n of them sits at n·t_min + (Σi)·h,
    # which the domain [t_min, t_max] holds at index Σi - (n - 1)·k (mod size).
    pmf = np.roll(pmf, (total - 1) + (size // 2 if total % 2 == 0 else 0))
    return DiscretePrivacyRandomVariable(pmf, domain.shift_right(shift), log_pmc_inf=log_pmc_inf)


def prv_epsilon_bounds(
    prvs: Sequence[object],
    counts: Sequence[int],
    delta: float,
    *,
    eps_error: float,
    delta_error: float,
) -> tuple[float, float, float]:
    """``(lower, estimate, upper)`` of ε(δ) for the composition of ``counts[i]`` × ``prvs[i]``."""
    composed = _compose(prvs, counts, eps_error, delta_error)
    lower, estimate, upper = composed.compute_epsilon(delta, delta_error, eps_error)
    return float(lower), float(estimate), float(upper)


def prv_delta_bounds(
    prvs: Sequence[object],
    counts: Sequence[int],
    epsilon: float,
    *,
    eps_error: float,
    delta_error: float,
) -> tuple[float, float, float]:
    """``(lower, estimate, upper)`` of δ(ε), as :meth:`PRVAccountant.compute_delta` defines them."""
    composed = _compose(prvs, counts, eps_error, delta_error)
    lower = float(composed.compute_delta_estimate(epsilon + eps_error) - delta_error)
    estimate = float(composed.compute_delta_estimate(epsilon))
    upper = float(composed.compute_delta_estimate(epsilon - eps_error) + delta_error)
    return lower, estimate, upper
