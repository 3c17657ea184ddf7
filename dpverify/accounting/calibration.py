"""Homogeneous Poisson runs: a fast ε for progress bars, and σ for a target ε.

:func:`epsilon_poisson` is what a trainer calls while it runs.  With
``accountant="rdp"`` it is cheap: the one-step RDP curve of a (q, σ) pair is
computed once (dp-accounting's ``RdpAccountant``) and cached; ε after T steps
is then the (ε, δ) conversion of T times that curve (RDP composes additively),
a few microseconds per call.  PLD and PRV answers are cached per argument tuple.

:func:`calibrate_noise_multiplier` finds the smallest σ (to a relative
tolerance) whose ε is at most the target, by bisection on log σ with the chosen
accountant; the result always satisfies ``ε(σ) ≤ target`` for that accountant.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from dpverify._validate import check_choice, check_int, check_positive, check_probability
from dpverify.accounting.accountants import MIN_TIGHT_NOISE_MULTIPLIER, compute_epsilon
from dpverify.accounting.segments import Segment
from dpverify.accounting.support import ACCOUNTANTS
from dpverify.errors import InvalidArgument

__all__ = ["NoiseBelowTightFloor", "calibrate_noise_multiplier", "epsilon_poisson"]


class NoiseBelowTightFloor(InvalidArgument):
    """The target needs σ below the floor where PLD/PRV are practical.

    Attributes:
        floor: the smallest σ the tight accountant evaluates.
        rdp_sigma: a σ that meets the target by RDP (an upper bound on ε).
    """

    def __init__(self, message: str, *, floor: float, rdp_sigma: float) -> None:
        super().__init__(message)
        self.floor = floor
        self.rdp_sigma = rdp_sigma


@functools.lru_cache(maxsize=128)
def _one_step_rdp(q: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    import dp_accounting as dpa
    from dp_accounting import rdp

    acc = rdp.RdpAccountant()
    acc.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)))
    return np.asarray(acc.orders, dtype=float), np.asarray(acc.rdp, dtype=float)


@functools.lru_cache(maxsize=1024)
def _epsilon_cached(q: float, sigma: float, steps: int, delta: float, accountant: str) -> float:
    if accountant == "rdp":
        from dp_accounting.rdp import rdp_privacy_accountant

        orders, curve = _one_step_rdp(q, sigma)
        eps, _ = rdp_privacy_accountant.compute_epsilon(orders, curve * steps, delta)
        return float(eps)
    report = compute_epsilon(
        Segment(sampling_rate=q, noise_multiplier=sigma, steps=steps),
        delta,
        accountants=(accountant,),
    )
    result = getattr(report, accountant)
    if result.epsilon is None:
        raise InvalidArgument(f"{accountant.upper()} could not compute ε: {result.reason}")
    return result.epsilon


def epsilon_poisson(
    sampling_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
) -> float:
    """ε(δ) of T Poisson-subsampled Gaussian steps (add/remove), cached.

    Args:
        sampling_rate: q in (0, 1].
        noise_multiplier: σ >= 0 (σ = 0 gives ``inf``).
        steps: T >= 0 (0 gives 0.0).
        delta: δ in (0, 1).
        accountant: ``"pld"`` (tight), ``"rdp"`` (upper bound, microseconds
            once warm: use it for progress bars) or ``"prv"`` (upper bound).

    Returns:
        ε as a float.

    Raises:
        InvalidArgument: a value out of range, or the accountant could not answer.

    Example:
        >>> round(epsilon_poisson(0.01, 1.1, 1000, 1e-5, "rdp"), 3)
        1.712
    """
    q = check_probability("sampling_rate", sampling_rate)
    sigma = check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    steps = check_int("steps", steps, minimum=0)
    delta = check_probability("delta", delta, allow_one=False)
    check_choice("accountant", accountant, ACCOUNTANTS)
    if steps == 0:
        return 0.0
    if sigma == 0.0:
        return math.inf
    return _epsilon_cached(q, sigma, steps, delta, accountant)


def calibrate_noise_multiplier(
    sampling_rate: float,
    steps: int,
    delta: float,
    target_epsilon: float,
    accountant: str = "pld",
    *,
    rtol: float = 1e-3,
    progress: Callable[[float, float], None] | None = None,
) -> float:
    """The smallest σ (within ``rtol``) whose ε(δ) after ``steps`` steps is <= the target.

    Args:
        sampling_rate: q in (0, 1].
        steps: T >= 1.
        delta: δ in (0, 1).
        target_epsilon: ε > 0.
        accountant: ``"pld"`` (default), ``"rdp"`` or ``"prv"``.
        rtol: relative width of the final bisection bracket.
        progress: called as ``progress(σ, ε)`` after each evaluation of the
            chosen accountant (a PLD evaluation can take many seconds).

    Returns:
        σ with ``epsilon_poisson(q, σ, T, δ, accountant) <= target_epsilon``.

    Raises:
        InvalidArgument: a value out of range, the target is unreachable
            (below what σ = 1e4 gives), or (PLD/PRV) it needs σ below
            :data:`~dpverify.accounting.accountants.MIN_TIGHT_NOISE_MULTIPLIER`.
    """
    q = check_probability("sampling_rate", sampling_rate)
    steps = check_int("steps", steps, minimum=1)
    delta = check_probability("delta", delta, allow_one=False)
    target = check_positive("target_epsilon", target_epsilon)
    check_choice("accountant", accountant, ACCOUNTANTS)
    rtol = check_positive("rtol", rtol)

    def eps(sigma: float) -> float:
        value = epsilon_poisson(q, sigma, steps, delta, accountant)
        if progress is not None:
            progress(sigma, value)
        return value

    # Bracket cheaply with RDP: RDP ≥ PLD (and ≈ PRV), so σ_RDP is an upper end.
    def rdp_eps(sigma: float) -> float:
        return epsilon_poisson(q, sigma, steps, delta, "rdp")

    hi = 1.0
    while rdp_eps(hi) > target:
        hi *= 2.0
        if hi > 1e4:
            raise InvalidArgument(
                f"target_epsilon={target_epsilon!r} is unreachable at δ={delta:g} "
                f"with {steps} steps of rate {q:g} (σ > 1e4 needed)"
            )
    lo = hi / 2.0
    while lo > 1e-3 and rdp_eps(lo) <= target:
        lo /= 2.0
    lo, hi = _bisect(rdp_eps, lo, hi, target, max(rtol, 1e-2))
    if accountant == "rdp":
        return _bisect(eps, lo, hi, target, rtol)[1]
    # The tight accountant needs at most about σ_RDP: bracket from below.
    floor = MIN_TIGHT_NOISE_MULTIPLIER
    lo = max(hi * 0.85, floor)
    while lo > floor and eps(lo) <= target:
        hi, lo = lo, max(lo * 0.7, floor)
    if lo <= floor and (hi <= floor or eps(floor) <= target):
        raise NoiseBelowTightFloor(
            f"target_epsilon={target_epsilon!r} needs noise_multiplier < {floor:g}, where "
            f"{accountant.upper()} is impractically slow; use the RDP accountant "
            f"(σ = {hi:.4g} meets the target by RDP)",
            floor=floor,
            rdp_sigma=hi,
        )
    while eps(hi) > target:  # PRV's upper bound can exceed RDP on tiny grids
        lo, hi = hi, hi * 1.1
    return _solve(eps, lo, hi, target, rtol)


def _solve(fn, lo: float, hi: float, target: float, rtol: float) -> float:
    """Smallest σ within ``rtol`` with fn(σ) <= target, fn decreasing, fn(hi) <= target < fn(lo).

    Brent's method on log σ (ε is smooth in σ), then a check that the answer
    is on the safe side; a few evaluations instead of a dozen bisection steps.
    """
    from scipy.optimize import brentq

    root = math.exp(
        brentq(lambda x: fn(math.exp(x)) - target, math.log(lo), math.log(hi), xtol=rtol / 2)
    )
    sigma = min(hi, root * (1.0 + rtol / 2))
    while fn(sigma) > target:
        sigma = min(hi, sigma * (1.0 + rtol / 2))
    return sigma


def _bisect(fn, lo: float, hi: float, target: float, rtol: float) -> tuple[float, float]:
    """Shrink [lo, hi] with fn(hi) <= target (fn decreasing) until hi/lo - 1 <= rtol."""
    while hi / lo - 1.0 > rtol:
        mid = math.sqrt(lo * hi)
        if fn(mid) <= target:
            hi = mid
        else:
            lo = mid
    return lo, hi
