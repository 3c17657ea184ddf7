"""Tests on each example's inclusions over time (T3, T6).

T3 conditions on the batch sizes; T6 uses the exact distribution of return
gaps of an i.i.d. Bernoulli(q) sequence observed in a window of T steps.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from dpverify.stats._declared import DeclaredNull
from dpverify.stats._format import number, times
from dpverify.stats._nulls import SizeLaw, scaled_chi2_tails, two_sided
from dpverify.stats._raw import RawTest
from dpverify.stats._stream import StreamSummary

__all__ = ["gap_moments", "group_membership", "inclusion_count_dispersion", "return_gaps"]


def group_membership(summary: StreamSummary, null: DeclaredNull) -> RawTest:
    """Cyclic Poisson: every example appears only in steps of its own group (exact).

    Under cyclic Poisson with b groups, two inclusions of one example are a
    multiple of b steps apart; any other return gap is a certain violation.
    """
    b = null.cycle_length
    hist = summary.gap_hist
    lags = np.flatnonzero(hist)
    bad = lags[(lags % b) != 0] if b > 1 else lags[:0]
    sensitive = "examples used in steps of more than one group"
    count = int(hist[bad].sum()) if bad.size else 0
    return RawTest(
        name="group_membership",
        statistic=float(count),
        p_value=0.0 if count else 1.0,
        sensitive_to=sensitive,
        meaningful=True,
        failure=(
            f"{number(count)} times an example came back after a number of steps that is not a "
            f"multiple of the cycle length {b} (e.g. {int(bad[0]) if bad.size else 0} steps): "
            "examples are used in more than one group, not cyclic Poisson sampling"
        ),
        details={"violations": count},
    )


def _group_steps(steps: int, b: int) -> list[np.ndarray]:
    return [np.arange(r, steps, b) for r in range(b)]

# Up to this many steps, gap_moments builds the (T-1)x(T-1) lag covariance directly.
_DIRECT_MAX_STEPS = 1200


def inclusion_count_dispersion(summary: StreamSummary, null: DeclaredNull | None = None) -> RawTest:
    """T3: dispersion of the per-example counts ``c_i``, given the batch sizes.

    Within a group of G examples sampled at steps ``t ∈ R`` (all N examples and
    all steps unless the sampler is cyclic), with ``p_t = b_t/G``,
    ``v_t = p_t(1 − p_t)`` and ``V = Σ_t v_t``, the statistic
    ``X = Σ_i (c_i − S_R/G)² / V`` has, conditionally on the sizes, the exact
    moments ``E X = G`` and ``Var X = 2G²/(G−1) · (1 − Σ_t v_t² / V²)`` (each
    step is a uniform subset of the group, independent of the others).  Groups
    add up; the sum is referred to the matching scaled χ².  Examples never
    sampled enter through ``Σ_i c_i² = Σ_{seen} c_i²`` (no O(N) state).  For a
    cyclic sampler an example's group is the class of its steps modulo b.
    Two-sided: counts too even mean epoch-based shuffling, too uneven mean
    examples sampled at different rates.
    """
    n = summary.dataset_size
    b = 1 if null is None else null.cycle_length
    g = n if null is None else null.group_size
    sensitive = "epoch-based shuffling (counts too even), examples sampled at different rates"
    if g < 2 or summary.steps == 0:
        return RawTest.insufficient(
            "inclusion_count_dispersion",
            sensitive,
            "not enough data: needs at least 2 examples and non-trivial batches",
        )
    residue = summary.seen_last % b
    sq = np.bincount(residue, weights=summary.seen_counts.astype(np.float64) ** 2, minlength=b)
    x = mean = var = big_v_min = 0.0
    big_v_min = math.inf
    for r, steps_r in enumerate(_group_steps(summary.steps, b)):
        p = summary.sizes[steps_r] / g
        v = p * (1.0 - p)
        big_v = float(v.sum())
        big_v_min = min(big_v_min, big_v)
        if big_v <= 0.0:
            continue
        s_r = float(summary.sizes[steps_r].sum())
        x += (float(sq[r]) - s_r * s_r / g) / big_v
        mean += g
        var += 2.0 * g * g / (g - 1.0) * (1.0 - float(np.sum(v * v)) / big_v**2)
    if mean <= 0.0:
        return RawTest.insufficient(
            "inclusion_count_dispersion",
            sensitive,
            "not enough data: needs at least 2 examples and non-trivial batches",
        )
    p_low, p_high = scaled_chi2_tails(x, mean, var)
    ratio = x / mean
    if p_low < p_high:
        failure = (
            f"examples are included too evenly across steps (count variance {times(ratio)} the "
            "expected): epoch-based shuffling, each example used once per epoch?"
        )
    else:
        failure = (
            f"some examples are included much more often than others (count variance {times(ratio)} "
            "the expected): examples sampled at different rates?"
        )
    meaningful = big_v_min >= 1.0 and g >= 20
    return RawTest(
        name="inclusion_count_dispersion",
        statistic=x,
        p_value=two_sided(p_low, p_high),
        sensitive_to=sensitive,
        meaningful=meaningful,
        failure=failure,
        note="" if meaningful else "not enough data: fewer than one expected inclusion per example",
        details={"variance_ratio": ratio, "direction": "low" if p_low < p_high else "high"},
    )


def gap_moments(steps: int, q: float, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of one example's binned return-gap counts under i.i.d. Bernoulli(q).

    For one example observed for T steps, ``Y_k`` counts consecutive inclusions
    ``k`` steps apart (``X_t^k = I_{t−k} I_t Π_{0<j<k} (1 − I_{t−j})``).  With
    ``p_k = q²(1−q)^{k−1}`` and ``n_k = T − k`` positions:

    * ``E Y_k = n_k p_k``;
    * two such windows are incompatible when they overlap (unless equal or
      end-to-end), independent when disjoint, and end-to-end with probability
      ``q³(1−q)^{k+k'−2}``; counting the pairs of positions gives, with
      ``s = k + k'``, ``Cov(Y_k, Y_k') = [k=k'] n_k p_k + 2 (T−s)₊ q³(1−q)^{s−2}
      − q⁴(1−q)^{s−2} (g(s) + k k')`` where ``g(s) = (T−s)(s+1)`` for ``s < T``
      and ``T(T−s)`` otherwise.

    Args:
        steps: T.
        q: inclusion probability (< 1).
        edges: bin starts ``1 = e_0 < e_1 < ... < e_B = T``; bin u holds lags
            ``[e_u, e_{u+1})``.

    Returns:
        ``(mean, cov)`` of the B binned counts of one example.
    """
    t = int(steps)
    lw = np.log1p(-q)
    k = np.arange(1, t, dtype=np.float64)
    geo = np.exp((k - 1.0) * lw)
    starts = edges[:-1] - 1
    mean = np.add.reduceat((t - k) * q * q * geo, starts)
    if t <= _DIRECT_MAX_STEPS:  # the full lag-by-lag matrix, then aggregate
        s = k[:, None] + k[None, :]
        w = np.exp((s - 2.0) * lw)
        g = np.where(s <= t - 1, (t - s) * (s + 1.0), t * (t - s))
        lag_cov = w * (2.0 * q**3 * np.maximum(0.0, t - s) - q**4 * (g + k[:, None] * k[None, :]))
        lag_cov[np.diag_indices_from(lag_cov)] += (t - k) * q * q * geo
        cov = np.add.reduceat(np.add.reduceat(lag_cov, starts, axis=0), starts, axis=1)
        return mean, cov
    kk = np.add.reduceat(k * geo, starts)
    nb = edges.size - 1
    cov = np.zeros((nb, nb))
    for u in range(nb):
        a1, b1 = int(edges[u]), int(edges[u + 1]) - 1
        for v in range(u, nb):
            a2, b2 = int(edges[v]), int(edges[v + 1]) - 1
            s = np.arange(a1 + a2, b1 + b2 + 1, dtype=np.float64)
            cnt = np.minimum(b1, s - a2) - np.maximum(a1, s - b2) + 1.0
            w = np.exp((s - 2.0) * lw) * cnt
            adjacent = 2.0 * q**3 * float(np.sum(np.maximum(0.0, t - s) * w))
            g = np.where(s <= t - 1, (t - s) * (s + 1.0), t * (t - s))
            product = q**4 * (float(np.sum(g * w)) + kk[u] * kk[v])
            c = adjacent - product + (mean[u] if u == v else 0.0)
            cov[u, v] = cov[v, u] = c
    return mean, cov


def _gap_edges(steps: int, q: float, n: int) -> np.ndarray:
    k = np.arange(1, steps, dtype=np.float64)
    expected = n * (steps - k) * q * q * np.exp((k - 1.0) * np.log1p(-q))
    total = float(expected.sum())
    nbins = int(min(16, total // 50))
    if nbins < 2:
        return np.zeros(0, dtype=np.int64)
    cum = np.cumsum(expected)
    ends = np.searchsorted(cum, total * np.arange(1, nbins) / nbins) + 1  # lag ending each bin
    edges = np.unique(np.concatenate(([1], ends + 1, [steps])))
    return edges[(edges >= 1) & (edges <= steps)]


def return_gaps(summary: StreamSummary, law: SizeLaw, null: DeclaredNull | None = None) -> RawTest:
    """T6: binned return gaps against their exact windowed law, Mahalanobis χ²_B.

    The gaps between an example's consecutive inclusions are *not* geometric
    when observed in a finite window (long gaps are cut off); :func:`gap_moments`
    gives the exact mean and covariance of the binned counts for one example,
    the examples add up (CLT), and ``(y − μ)ᵀ Σ⁻¹ (y − μ) ≈ χ²_B``.  Bins have
    equal expected counts (at most 16, each >= 50 expected gaps).  Catches
    epoch structure (gaps confined to about two epochs) and periodic reuse.
    Uses the per-example rate ``p' = E[b]/G`` of the size law; for a cyclic
    sampler gaps are counted in cycles (an example's group has ``⌈(T−r)/b⌉``
    steps) and each of the b groups has G examples.
    """
    b = 1 if null is None else null.cycle_length
    g = summary.dataset_size if null is None else null.group_size
    q = law.mean / law.dataset_size
    sensitive = "epoch structure (returns too regular), periodic reuse, rates changing over time"
    windows = [len(x) for x in _group_steps(summary.steps, b)]
    t_max = max(windows) if windows else 0
    edges = (
        _gap_edges(t_max, q, g * b)
        if (t_max >= 3 and 0.0 < q < 1.0)
        else np.zeros(0, dtype=np.int64)
    )
    if edges.size < 3:
        return RawTest.insufficient(
            "return_gaps", sensitive, "not enough data: too few returns of examples to bin"
        )
    mean = np.zeros(edges.size - 1)
    cov = np.zeros((edges.size - 1, edges.size - 1))
    for w in sorted(set(windows)):
        e = edges.copy()
        e[-1] = w
        if w < 3 or np.any(np.diff(e) <= 0):
            continue
        m, c = gap_moments(w, q, e)
        k = windows.count(w) * g
        mean += k * m
        cov += k * c
    hist = summary.gap_hist[::b] if b > 1 else summary.gap_hist
    full = np.zeros(t_max, dtype=np.int64)
    m_ = min(t_max, hist.size)
    full[:m_] = hist[:m_]
    observed = np.add.reduceat(full[1:], edges[:-1] - 1).astype(np.float64)
    diff = observed - mean
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return RawTest.insufficient(
            "return_gaps", sensitive, "not enough data: degenerate gap covariance"
        )
    z = np.linalg.solve(chol, diff)
    chi2 = float(z @ z)
    nb = edges.size - 1
    p = float(stats.chi2.sf(chi2, nb))
    std = diff / np.sqrt(np.diag(cov))
    worst = int(np.argmax(np.abs(std)))
    lo, hi = int(edges[worst]) * b, (int(edges[worst + 1]) - 1) * b
    span = f"{lo}" if lo == hi else f"{lo}-{hi}"
    word = "more" if diff[worst] > 0 else "less"
    failure = (
        f"examples come back after {span} steps {word} often than independent sampling gives "
        f"({number(observed[worst])} vs {number(mean[worst])} expected): epoch structure or periodic reuse?"
    )
    return RawTest(
        name="return_gaps",
        statistic=chi2,
        p_value=p,
        sensitive_to=sensitive,
        meaningful=True,
        failure=failure,
        details={"bins": nb, "worst_bin": [lo, hi]},
    )
