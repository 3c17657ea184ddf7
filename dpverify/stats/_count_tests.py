"""Tests on each example's inclusions over time (T3, T6).

T3 conditions on the batch sizes; T6 uses the exact distribution of return
gaps of an i.i.d. Bernoulli(q) sequence observed in a window of T steps.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from dpverify.stats._nulls import SizeLaw, scaled_chi2_tails, two_sided
from dpverify.stats._raw import RawTest
from dpverify.stats._stream import StreamSummary

__all__ = ["gap_moments", "inclusion_count_dispersion", "return_gaps"]

# Up to this many steps, gap_moments builds the (T-1)x(T-1) lag covariance directly.
_DIRECT_MAX_STEPS = 1200


def inclusion_count_dispersion(summary: StreamSummary) -> RawTest:
    """T3: dispersion of the per-example counts ``c_i``, given the batch sizes.

    With ``p_t = b_t/N``, ``v_t = p_t(1 − p_t)`` and ``V = Σ_t v_t``, the statistic
    ``X = Σ_i (c_i − S/N)² / V`` has, conditionally on the sizes, the exact
    moments ``E X = N`` and ``Var X = 2N²/(N−1) · (1 − Σ_t v_t² / V²)`` (each
    step is a uniform subset, independent of the others); it is referred to
    the matching scaled χ².  Conditioning on the sizes separates this test from
    the batch-size tests.  Two-sided: counts too even mean epoch-based
    shuffling, too uneven mean examples sampled at different rates.
    """
    n = summary.dataset_size
    p = summary.sizes / n
    v = p * (1.0 - p)
    big_v = float(v.sum())
    sensitive = "epoch-based shuffling (counts too even), examples sampled at different rates"
    if n < 2 or big_v <= 0.0:
        return RawTest.insufficient(
            "inclusion_count_dispersion",
            sensitive,
            "not enough data: needs at least 2 examples and non-trivial batches",
        )
    counts = summary.counts
    centre = summary.total / n
    x = float(np.sum((counts - centre) ** 2) / big_v)
    var = 2.0 * n * n / (n - 1.0) * (1.0 - float(np.sum(v * v)) / big_v**2)
    p_low, p_high = scaled_chi2_tails(x, float(n), var)
    ratio = x / n
    if p_low < p_high:
        failure = (
            f"examples are included too evenly across steps (count variance {ratio:.2g} times the "
            "expected): epoch-based shuffling, each example used once per epoch?"
        )
    else:
        failure = (
            f"some examples are included much more often than others (count variance {ratio:.2g} "
            "times the expected): examples sampled at different rates?"
        )
    meaningful = big_v >= 1.0 and n >= 20
    return RawTest(
        name="inclusion_count_dispersion",
        statistic=x,
        p_value=two_sided(p_low, p_high),
        sensitive_to=sensitive,
        meaningful=meaningful,
        failure=failure,
        note="" if meaningful else "not enough data: fewer than one expected inclusion per example",
        details={"variance_ratio": ratio},
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


def return_gaps(summary: StreamSummary, law: SizeLaw) -> RawTest:
    """T6: binned return gaps against their exact windowed law, Mahalanobis χ²_B.

    The gaps between an example's consecutive inclusions are *not* geometric
    when observed in a finite window (long gaps are cut off); :func:`gap_moments`
    gives the exact mean and covariance of the binned counts for one example,
    the N examples add up (CLT), and ``(y − Nμ)ᵀ (NΣ)⁻¹ (y − Nμ) ≈ χ²_B``.
    Bins have equal expected counts (at most 16, each >= 50 expected gaps).
    Catches epoch structure (gaps confined to about two epochs) and periodic
    reuse.  Uses the per-example rate ``q' = E[b]/N`` of the size law.
    """
    t, n = summary.steps, summary.dataset_size
    q = law.mean / n
    sensitive = "epoch structure (returns too regular), periodic reuse, rates changing over time"
    edges = _gap_edges(t, q, n) if (t >= 3 and 0.0 < q < 1.0) else np.zeros(0, dtype=np.int64)
    if edges.size < 3:
        return RawTest.insufficient(
            "return_gaps", sensitive, "not enough data: too few returns of examples to bin"
        )
    mean, cov = gap_moments(t, q, edges)
    hist = np.zeros(t, dtype=np.int64)
    m = min(t, summary.gap_hist.size)
    hist[:m] = summary.gap_hist[:m]
    observed = np.add.reduceat(hist[1:], edges[:-1] - 1).astype(np.float64)
    diff = observed - n * mean
    sigma = n * cov
    try:
        chol = np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        return RawTest.insufficient(
            "return_gaps", sensitive, "not enough data: degenerate gap covariance"
        )
    z = np.linalg.solve(chol, diff)
    chi2 = float(z @ z)
    nb = edges.size - 1
    p = float(stats.chi2.sf(chi2, nb))
    std = diff / np.sqrt(np.diag(sigma))
    worst = int(np.argmax(np.abs(std)))
    lo, hi = int(edges[worst]), int(edges[worst + 1]) - 1
    span = f"{lo}" if lo == hi else f"{lo}-{hi}"
    word = "more" if diff[worst] > 0 else "less"
    failure = (
        f"examples come back after {span} steps {word} often than independent sampling gives "
        f"({int(observed[worst])} vs {n * mean[worst]:.1f} expected): epoch structure or periodic reuse?"
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
