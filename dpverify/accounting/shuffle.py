r"""A valid *lower* bound on ε for DP-SGD with shuffled fixed-size batches.

No accountant in dp-accounting or prv-accountant gives an upper bound for
shuffling, and the Poisson ε that implementations often report for it does not
apply.  Chua et al. (ICML 2024) show how large the gap can be by exhibiting a
pair of neighbouring inputs on which the mechanism is easy to attack.  We
compute the same kind of bound, exactly, from first principles.

**The pair** (adaptive batch linear queries with |ψ| ≤ 1, the setting of
DP-SGD with clip norm 1; the *zero-out* relation: one example replaced by ⊥
with ψ(⊥) = 0, which for Poisson sampling gives the add/remove ε).  Take every
example but one to contribute ψ = −1 at every step, and the differing example
+1 in D and ⊥ (0) in D'.  An epoch cuts a uniformly random permutation into k
batches of size B; the released noisy sums, shifted by B, are

    D : y = 2·e_τ + Z,        D' : y = 1·e_τ' + Z,       Z ~ N(0, σ² I_k),

with τ, τ' the (uniform) batch of the differing slot.  So one epoch is the
pair of Gaussian mixtures P = MoG(2), Q = MoG(1), MoG(m) = (1/k) Σ_t N(m e_t, σ²I).
When ``k·q < 1`` (``drop_last`` leaves examples out of every epoch; or the last,
partial epoch of a run), the slot lands in a released batch only with
probability w = k·q and otherwise both outputs are N(0, σ²I).  Epochs use
independent permutations, so E epochs are the E-fold product.

**The test**: M = max_t y_t.  Its law is exact,

    Pr_m[M ≤ c] = w Φ((c−m)/σ) Φ(c/σ)^{k−1} + (1−w) Φ(c/σ)^k,

and any post-processing of the output can only lower the hockey-stick
divergence, so every number computed from M is a lower bound on the
mechanism's δ(ε), hence on its ε(δ):

1. one epoch, threshold sets {M > c}:  δ ≥ max_c Pr_P[M > c] − e^ε Pr_Q[M > c];
2. all epochs: M is binned (bins are a post-processing), each bin's privacy
   loss log(p_i/q_i) is rounded *down* to a grid (δ(ε) = E_P[(1 − e^{ε−L})₊]
   is increasing in L, so rounding down can only lower δ), and the resulting
   optimistic PLD is composed over epochs with dp-accounting
   (``pessimistic_estimate=False``).

The bound returned is the larger of the two ε's.  Caveats: floating point, and
dp-accounting's tail truncation of at most 1e-15 in δ.  Sanity figure
(Chua et al., "How Private are DP-SGD Implementations?", ICML 2024): σ = 0.8, 1000 steps in one epoch, δ = 1e-5: Poisson ε ≈ 0.30,
shuffle ε ≥ 5.2.

References:
    Chua, Ghazi, Kamath, Kumar, Manurangsi, Sinha & Zhang 2024, "How Private
    are DP-SGD Implementations?", ICML, arXiv:2403.17673; and "Scalable DP-SGD:
    Shuffling vs. Poisson Subsampling", NeurIPS 2024, arXiv:2411.04205
    (multi-epoch).  Zero-out relation: Kairouz et al. 2021, arXiv:2103.00039.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from dpverify._validate import check_int, check_positive, check_probability
from dpverify.errors import InvalidArgument

__all__ = ["shuffle_delta_lower_bound", "shuffle_lower_bound"]

_LOG_TAIL = -80.0  # bins beyond this log-mass are merged into the two end bins
_EPS_CAP = 1e4  # single-epoch bounds above this are reported as this (still a lower bound)


def _log_cdf_max(c: np.ndarray, mean: float, sigma: float, k: int, w: float) -> np.ndarray:
    """log Pr[max_t y_t ≤ c] under the epoch's mixture with shift ``mean``."""
    from scipy.special import log_ndtr

    base = log_ndtr(c / sigma)
    shifted = log_ndtr((c - mean) / sigma)
    if w >= 1.0:
        return shifted + (k - 1) * base
    return (k - 1) * base + np.logaddexp(math.log(w) + shifted, math.log1p(-w) + base)


def _log_sf(log_cdf: np.ndarray) -> np.ndarray:
    """log(1 − exp(log_cdf)), stable for log_cdf near 0 and very negative."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(
            log_cdf > -math.log(2), np.log(-np.expm1(log_cdf)), np.log1p(-np.exp(log_cdf))
        )


def _caps(sigma: float, k: int, gap: float) -> np.ndarray:
    from scipy.special import ndtri

    lower = sigma * float(ndtri(math.exp(_LOG_TAIL / k)))
    # Pr[some coordinate of N(2, σ²) beyond this] < k·e^_LOG_TAIL.
    upper = 2.0 + sigma * float(-ndtri(math.exp(_LOG_TAIL - math.log(k))))
    return np.arange(lower, upper + gap, gap)


def _single_epoch_delta(eps: float, sigma: float, k: int, w: float, caps: np.ndarray) -> float:
    log_sp = _log_sf(_log_cdf_max(caps, 2.0, sigma, k, w))
    log_sq = _log_sf(_log_cdf_max(caps, 1.0, sigma, k, w))
    return float(max(0.0, np.max(np.exp(log_sp) - np.exp(eps + log_sq))))


def _single_epoch_gap(
    eps: float, *, sigma: float, k: int, w: float, caps: np.ndarray, delta: float
) -> float:
    return _single_epoch_delta(eps, sigma, k, w, caps) - delta


def _bin_log_probs(caps: np.ndarray, mean: float, sigma: float, k: int, w: float) -> np.ndarray:
    """log Pr[M in bin] for bins (−∞, c0], (c0, c1], …, (c_last, ∞)."""
    log_cdf = _log_cdf_max(caps, mean, sigma, k, w)
    log_sf = _log_sf(log_cdf)
    # interior bin (a, b]: use the CDF difference below the median, the SF difference above.
    a_cdf, b_cdf = log_cdf[:-1], log_cdf[1:]
    a_sf, b_sf = log_sf[:-1], log_sf[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        from_cdf = b_cdf + np.log(-np.expm1(a_cdf - b_cdf))
        from_sf = a_sf + np.log(-np.expm1(b_sf - a_sf))
    interior = np.where(b_cdf < -math.log(2), from_cdf, from_sf)
    return np.concatenate([[log_cdf[0]], interior, [log_sf[-1]]])


def _epoch_pld(sigma: float, k: int, w: float, discretization: float):
    """Optimistic PLD of the binned max statistic for one (possibly partial) epoch."""
    from dp_accounting.pld import pld_pmf, privacy_loss_distribution

    caps = _caps(sigma, k, discretization * sigma * sigma)
    log_p = _bin_log_probs(caps, 2.0, sigma, k, w)
    log_q = _bin_log_probs(caps, 1.0, sigma, k, w)
    ok = np.isfinite(log_p) & np.isfinite(log_q)
    # Dropping bins (mass of P) and rounding losses down both only lower δ(ε).
    losses = np.floor((log_p[ok] - log_q[ok]) / discretization).astype(np.int64)
    probs = np.exp(log_p[ok])
    pmf: dict[int, float] = {}
    for loss, prob in zip(losses.tolist(), probs.tolist(), strict=True):
        if prob > 0.0:
            pmf[loss] = pmf.get(loss, 0.0) + prob
    sparse = pld_pmf.SparsePLDPmf(pmf, discretization, 0.0, False)
    return privacy_loss_distribution.PrivacyLossDistribution(sparse)


def _epochs(
    sampling_rate: float, steps: int, steps_per_epoch: int | None
) -> list[tuple[int, float, int]]:
    """``[(steps in epoch k, weight w, how many such epochs)]``."""
    per_epoch = steps_per_epoch or max(1, math.floor(1.0 / sampling_rate + 1e-9))
    full, rest = divmod(steps, per_epoch)
    out = []
    if full:
        out.append((per_epoch, min(1.0, per_epoch * sampling_rate), full))
    if rest:
        out.append((rest, min(1.0, rest * sampling_rate), 1))
    return out


@functools.lru_cache(maxsize=256)
def _lower_bound(
    q: float, sigma: float, steps: int, delta: float, per_epoch: int | None, disc: float
) -> float:
    from scipy.optimize import brentq

    epochs = _epochs(q, steps, per_epoch)
    # 1. best single epoch, threshold test (closed form).
    best = 0.0
    for k, w, _ in epochs:
        caps = _caps(sigma, k, 1e-3 * sigma)
        if _single_epoch_delta(0.0, sigma, k, w, caps) <= delta:
            continue
        hi = 1.0
        while _single_epoch_delta(hi, sigma, k, w, caps) > delta:
            hi *= 2.0
            if hi > _EPS_CAP:
                break
        if _single_epoch_delta(hi, sigma, k, w, caps) > delta:
            # δ(ε) decreases in ε, so δ(hi) > δ already proves ε > hi (tiny σ): a valid
            # lower bound; the composed bound below could only raise it, at a huge cost.
            return hi
        gap = functools.partial(_single_epoch_gap, sigma=sigma, k=k, w=w, caps=caps, delta=delta)
        eps = brentq(gap, 0.0, hi, xtol=1e-6)
        best = max(best, float(eps))
    # 2. all epochs composed (optimistic PLD of the binned max statistic).
    composed = None
    for k, w, count in epochs:
        part = _epoch_pld(sigma, k, w, disc)
        if count > 1:
            part = part.self_compose(count)
        composed = part if composed is None else composed.compose(part)
    if composed is not None:
        best = max(best, float(composed.get_epsilon_for_delta(delta)))
    return best


def shuffle_lower_bound(
    sampling_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    *,
    steps_per_epoch: int | None = None,
    discretization: float = 1e-3,
) -> float:
    """A valid lower bound on ε(δ) of DP-SGD with shuffled fixed-size batches.

    Args:
        sampling_rate: q = B/N, batch size over data set size.
        noise_multiplier: σ > 0.
        steps: executed steps T >= 1.
        delta: δ in (0, 1).
        steps_per_epoch: batches per epoch k (default ⌊1/q⌋, i.e. ``N // B``
            when q = B/N); the run is ⌊T/k⌋ full epochs and one partial epoch.
        discretization: privacy-loss grid of the composed bound.

    Returns:
        ε such that the shuffled mechanism is *not* (ε', δ)-DP for any ε' < ε
        (0.0 when the construction certifies nothing at this δ; about 1.6·10⁴
        when one epoch alone already exceeds 10⁴, e.g. σ ≈ 0.02).  See the module
        docstring for the construction (after Chua et al., ICML 2024).

    Raises:
        InvalidArgument: a value out of range.

    Example:
        >>> round(shuffle_lower_bound(1e-3, 0.8, 1000, 1e-5), 1)   # Poisson: 0.30
        5.2
    """
    q = check_probability("sampling_rate", sampling_rate)
    sigma = check_positive("noise_multiplier", noise_multiplier)
    steps = check_int("steps", steps, minimum=1)
    delta = check_probability("delta", delta, allow_one=False)
    disc = check_positive("discretization", discretization)
    if steps_per_epoch is not None:
        steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        if steps_per_epoch * q > 1.0 + 1e-9:
            raise InvalidArgument(
                f"steps_per_epoch={steps_per_epoch} batches of rate {q:g} exceed one epoch"
            )
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # tiny σ: exp overflows
        return _lower_bound(q, sigma, steps, delta, steps_per_epoch, disc)


def shuffle_delta_lower_bound(
    sampling_rate: float, noise_multiplier: float, steps_in_epoch: int, epsilon: float
) -> float:
    """Single-epoch threshold-test lower bound on δ(ε) (part 1 of the construction)."""
    q = check_probability("sampling_rate", sampling_rate)
    sigma = check_positive("noise_multiplier", noise_multiplier)
    k = check_int("steps_in_epoch", steps_in_epoch, minimum=1)
    eps = check_positive("epsilon", epsilon, allow_zero=True)
    w = min(1.0, k * q)
    return _single_epoch_delta(eps, sigma, k, w, _caps(sigma, k, 1e-3 * sigma))
