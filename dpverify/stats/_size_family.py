"""One exact Monte Carlo p-value for the batch-size tests together (T1, T2, T4, T9).

The batch-size tests — dispersion (T1), fit (T2), total (T4), truncation scan
(T9) — are all functions of the same batch-size histogram, so they are
strongly dependent, and some are discrete (T9 takes few values; at small q·N
the sizes take few values).  Holm treats them as if their evidence did not
overlap, and the battery was conservative (honest rate about 0.8 α where only
these tests vote).  Here they form **one family** tested by the min-p
statistic of Westfall & Young (1993, *Resampling-Based Multiple Testing*,
§2.6): with ``p̃_j(h)`` the members' analytic p-values computed from a
histogram ``h`` (below),

    S(h) = min_j p̃_j(h),      p_family = P(S(H) <= S(h_obs)),

``H`` the histogram of T i.i.d. sizes under the declared size law,
``H ~ Multinomial(T, pmf)`` — drawn in O(categories), not O(T).  The
probability is estimated by **sequential Monte Carlo** (Besag & Clifford 1991,
"Sequential Monte Carlo p-values", Biometrika 78:301–304): draw until ``h``
simulated statistics are at least as extreme as the observed one (p = h/L
after L draws) or ``n − 1`` draws are made (p = (g + 1)/n); B&C show
``P(p <= p_i) = p_i`` at every point of that p-value's support for a
continuous statistic.  Ties (few size values, a p̃ that underflows to 0) are
broken by i.i.d. uniform marks on the observed and every simulated histogram,
which makes the statistic continuous; and the discrete p is then spread
uniformly down to the next support point, ``p* = p_prev + V (p − p_prev)``,
V ~ U(0, 1), so that ``P(p* <= x) = x`` **for every x**: the family spends its
share of α exactly, whatever α, however discrete the sizes.  Deterministic
given the battery's seed.

**Members' p̃.**  Computed from integer summaries of a histogram (T, Σb, Σb²,
bin counts, largest and smallest size and the count at the largest), the same
code for the observed and the simulated histograms:

* T1: D = Σ(b − μ_r)²/σ_r², scaled χ² with the exact mean T and variance
  ``T(μ₄/σ⁴ − 1)``, two-sided;
* T2: Pearson χ² over the bins of the declared size law, χ²(bins − 1);
* T4: the total's exact upper-tail mid-p (one-sided);
* T9: ``3·min(pile-up, largest, smallest)``, the pile-up term at the largest
  size ``F(M)^T·P(Binomial(T, P(b=M)/F(M)) >= K)`` (the dominant term of the
  member's exact sum).

These need not be valid p-values: validity comes from the Monte Carlo.  The
members report their own (valid) p-values unchanged.

**Conservative declarations.**  The shape members use the rate the indices
show when it is below the declared one (``r = min(q, Σb/(G T))``, as the
member tests do), recomputed for every simulated histogram, so S is one fixed
function of the histogram.  Simulation is at the declared q: the family is
exact at the boundary of the null (real rate = declared rate), where an honest
run sits; below it T4 can only fire less.

**Out-of-table sizes.**  The simulation uses the size-law categories that
carry the probability (the rest, of total mass at most 10⁻⁹/T, is one extra
category); a simulated histogram that lands there counts as at least as
extreme as the observed one (conservative by at most 10⁻⁹).

**Gross departures.**  When the members' own valid p-values give a
Bonferroni bound ``J·min_j p_j <= τ`` (:data:`GROSS`, 10⁻⁵), that bound is the
family p-value and no Monte Carlo is run; otherwise the family p-value is
``τ + (1 − τ)·p_MC``.  Then ``P(p <= x) <= x`` for x <= τ (Bonferroni) and
``<= τ + (x − τ)/(1 − τ) <= x/(1 − τ)`` above: valid within a factor
1 + 10⁻⁵ at every level.

**Cost.**  Each draw costs O(K) (K categories: about 160 at N = 10⁴,
q = 0.01; about 2 000 at ImageNet's N = 1.28·10⁶, q = 0.0128).  The
sequential rule stops after about ``h/p`` draws: ~400 for an unremarkable run,
~``h/level`` near the rejection level, at most :func:`max_draws`
(``h/level`` within [2 000, 30 000]; the level is the largest family p-value
the battery's Holm procedure rejects, given the other tests).  With one fixed
seed the Monte Carlo sample is one realisation: the p-value is exact
averaged over seeds, and for a fixed seed its level is reproduced to about
``h^-1/2`` ≈ 7 % (to about ``(level·30 000)^-1/2`` where the draws cap first:
≈ 27 % at a level of 4·10⁻⁴).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from dpverify.stats._nulls import SizeLaw

__all__ = ["FamilyResult", "SizeFamily", "max_draws"]

#: Exceedances after which the sequential Monte Carlo stops (Besag & Clifford's h): the
#: p-value is exact whatever h; h sets how closely one Monte Carlo sample (one seed)
#: reproduces the null distribution near the level (relative error about h^-1/2).
STOP_HITS = 200
#: A Bonferroni bound at or below this is the family p-value (no Monte Carlo).
GROSS = 1e-5
#: Draws at most (a rejection at α = 10⁻³ stops here).
MAX_DRAWS = 30_000
#: Probability mass of the size law left out of the simulated categories, times T.
_LEFT_OUT = 1e-9
#: Relative tolerance under which two values of S are a tie (broken by the marks).
_TIE = 1e-10


def max_draws(level: float) -> int:
    """Draws at most: :data:`STOP_HITS`/level, within [2 000, :data:`MAX_DRAWS`]."""
    return int(min(MAX_DRAWS, max(2_000, math.ceil(STOP_HITS / max(level, 1e-300)))))


@dataclasses.dataclass(frozen=True)
class FamilyResult:
    """The family's p-value and, per member, the Westfall–Young single-step adjusted one.

    ``member_p[j]`` estimates ``P(S(H) <= p̃_j(h_obs))`` from the same draws
    (the minimiser's is the family p-value): how extreme member j alone is
    against the family's null distribution.
    """

    p_value: float
    members: tuple[str, ...]
    member_p: tuple[float, ...]
    observed: tuple[float, ...]
    draws: int
    method: str


@dataclasses.dataclass(frozen=True)
class _Summary:
    """Integer summaries of R histograms (arrays of length R; ``bins`` is R × B)."""

    total: np.ndarray
    square: np.ndarray
    largest: np.ndarray
    at_largest: np.ndarray
    smallest: np.ndarray
    bins: np.ndarray


class SizeFamily:
    """The family of the batch-size tests for one run (see the module docstring).

    Args:
        declared: the declared size law (simulation law; T4's null).
        steps: T.
        members: names among ``batch_size_dispersion``, ``batch_size_fit``,
            ``total_inclusions``, ``truncation_scan``.
        refit: whether the shape members use ``min(q, observed rate)``
            (Poisson and cyclic Poisson) or the declared law (caps).
    """

    def __init__(self, declared: SizeLaw, steps: int, members: Sequence[str], refit: bool) -> None:
        self.law = declared
        self.steps = int(steps)
        self.members = tuple(members)
        self.refit = bool(refit) and declared.cap is None and declared.fixed_size is None
        self.n = declared.dataset_size
        self.q = declared.sampling_rate
        from dpverify.stats._size_tests import _bins  # the member's own bins

        self.edges = _bins(declared, self.steps) if self.steps else np.zeros(0, dtype=np.int64)
        pmf = declared.pmf
        order = np.argsort(pmf)
        cut = np.cumsum(pmf[order]) <= _LEFT_OUT / max(1, self.steps)
        keep = np.ones(pmf.size, dtype=bool)
        keep[order[cut]] = False
        self.support = declared.support[keep]
        self.probs = np.append(pmf[keep], max(0.0, 1.0 - float(pmf[keep].sum())))
        self.bin_of = np.minimum(np.searchsorted(self.edges, self.support, side="left"), max(0, self.edges.size - 1))

    # ---------------------------------------------------------------- summaries

    def observed_summary(self, sizes: np.ndarray) -> _Summary:
        s = np.asarray(sizes, dtype=np.int64)
        largest = int(s.max())
        which = np.minimum(np.searchsorted(self.edges, s, side="left"), max(0, self.edges.size - 1))
        bins = np.bincount(which, minlength=max(1, self.edges.size))[None, :]
        return _Summary(
            total=np.array([float(s.sum())]),
            square=np.array([float(np.sum(s.astype(np.float64) ** 2))]),
            largest=np.array([largest]),
            at_largest=np.array([int(np.count_nonzero(s == largest))]),
            smallest=np.array([int(s.min())]),
            bins=bins,
        )

    def _draw_summary(self, hist: np.ndarray) -> tuple[_Summary, np.ndarray]:
        outside = hist[:, -1] > 0
        h = hist[:, :-1]
        k = self.support
        present = h > 0
        top = k.size - 1 - np.argmax(present[:, ::-1], axis=1)
        bottom = np.argmax(present, axis=1)
        nb = max(1, self.edges.size)
        bins = np.zeros((h.shape[0], nb), dtype=np.int64)
        present_bins, starts = np.unique(self.bin_of, return_index=True)  # bin_of is sorted
        bins[:, present_bins] = np.add.reduceat(h, starts, axis=1)
        return (
            _Summary(
                total=h @ k.astype(np.float64),
                square=h @ (k.astype(np.float64) ** 2),
                largest=k[top],
                at_largest=h[np.arange(h.shape[0]), top],
                smallest=k[bottom],
                bins=bins,
            ),
            outside,
        )

    # ---------------------------------------------------------------- members' p̃

    def _rate(self, sm: _Summary) -> np.ndarray:
        if not self.refit:
            return np.full(sm.total.shape, self.q)
        observed = sm.total / (self.n * float(self.steps))
        return np.maximum(np.minimum(self.q, observed), 1e-300)

    def _law_arrays(self, r: np.ndarray, x: np.ndarray, what: str) -> np.ndarray:
        """log pmf / log cdf / log sf of the (refitted) size law at integer x, per row."""
        if self.refit:
            fn = {"logpmf": stats.binom.logpmf, "logcdf": stats.binom.logcdf, "logsf": stats.binom.logsf}[what]
            return fn(x, self.n, r)
        law = self.law
        sup = law.support
        cdf = np.minimum(np.cumsum(law.pmf), 1.0)
        pos = np.searchsorted(sup, x, side="right") - 1
        with np.errstate(divide="ignore"):
            if what == "logpmf":
                ok = (pos >= 0) & (sup[np.maximum(pos, 0)] == x)
                return np.where(ok, np.log(law.pmf[np.maximum(pos, 0)]), -np.inf)
            c = np.where(pos >= 0, cdf[np.maximum(pos, 0)], 0.0)
            return np.log(c) if what == "logcdf" else np.log(np.maximum(1.0 - c, 0.0))

    def _p_dispersion(self, sm: _Summary, r: np.ndarray) -> np.ndarray:
        t = float(self.steps)
        if self.refit:
            mu = self.n * r
            pq = r * (1.0 - r)
            var = self.n * pq
            kurt = 3.0 + (1.0 - 6.0 * pq) / np.maximum(var, 1e-300)
        else:
            mu = np.full(r.shape, self.law.mean)
            var = np.full(r.shape, self.law.var)
            kurt = np.full(r.shape, self.law.central_moment(4) / self.law.var**2)
        d = (sm.square - 2.0 * mu * sm.total + t * mu * mu) / var
        dvar = t * (kurt - 1.0)
        c = dvar / (2.0 * t)
        nu = 2.0 * t * t / dvar
        low = stats.chi2.cdf(d / c, nu)
        high = stats.chi2.sf(d / c, nu)
        return np.minimum(1.0, 2.0 * np.minimum(low, high))

    def _p_fit(self, sm: _Summary, r: np.ndarray) -> np.ndarray:
        t = float(self.steps)
        e = self.edges
        rates, inverse = np.unique(r, return_inverse=True)  # r depends on the total only
        cdf = np.exp(self._law_arrays(rates[:, None], e[None, :-1], "logcdf"))
        cdf = np.broadcast_to(cdf, (rates.size, e.size - 1))[inverse.ravel()]
        cum = np.concatenate([np.zeros((r.size, 1)), cdf, np.ones((r.size, 1))], axis=1)
        expected = t * np.maximum(np.diff(cum, axis=1), 1e-300)
        chi2 = np.sum((sm.bins - expected) ** 2 / expected, axis=1)
        return stats.chi2.sf(chi2, e.size - 1)

    def _p_total(self, sm: _Summary) -> np.ndarray:
        t = self.steps
        law = self.law
        if law.cap is None:
            s = sm.total
            return np.minimum(
                1.0, stats.binom.sf(s, self.n * t, self.q) + 0.5 * stats.binom.pmf(s, self.n * t, self.q)
            )
        z = (sm.total - t * law.mean) / math.sqrt(t * law.var)
        return stats.norm.sf(z)

    def _p_truncation(self, sm: _Summary, r: np.ndarray) -> np.ndarray:
        t = float(self.steps)
        m, k, lo = sm.largest, sm.at_largest, sm.smallest
        log_f = self._law_arrays(r, m, "logcdf")
        log_f1 = self._law_arrays(r, m - 1, "logcdf")
        p_max = 0.5 * (np.exp(t * log_f) + np.exp(t * log_f1))
        log_s = self._law_arrays(r, lo - 1, "logsf")
        log_s1 = self._law_arrays(r, lo, "logsf")
        p_min = 0.5 * (np.exp(t * log_s) + np.exp(t * log_s1))
        log_a = self._law_arrays(r, m, "logpmf")
        with np.errstate(invalid="ignore", over="ignore"):
            ratio = np.exp(np.minimum(log_a - log_f, 0.0))
            tail = stats.binom.sf(k - 1, self.steps, ratio)
            pile = np.where(np.isfinite(log_a), np.exp(t * log_f) * tail, 1.0)
        pile = np.where(np.isnan(pile), 1.0, pile)
        return np.minimum(1.0, 3.0 * np.minimum(np.minimum(pile, p_max), p_min))

    def member_p(self, sm: _Summary) -> np.ndarray:
        """R × J array of the members' p̃."""
        r = self._rate(sm)
        cols = []
        for name in self.members:
            if name == "batch_size_dispersion":
                cols.append(self._p_dispersion(sm, r))
            elif name == "batch_size_fit":
                cols.append(self._p_fit(sm, r))
            elif name == "total_inclusions":
                totals, inverse = np.unique(sm.total, return_inverse=True)
                sub = dataclasses.replace(sm, total=totals)
                cols.append(self._p_total(sub)[inverse.ravel()])
            else:  # T9 depends on (total, largest, count at largest, smallest) only
                key = np.stack([sm.total, sm.largest, sm.at_largest, sm.smallest], axis=1)
                _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
                sub = dataclasses.replace(
                    sm,
                    largest=sm.largest[first],
                    at_largest=sm.at_largest[first],
                    smallest=sm.smallest[first],
                )
                cols.append(self._p_truncation(sub, r[first])[inverse.ravel()])
        out = np.stack(cols, axis=1)
        return np.where(np.isnan(out), 1.0, out)

    # ---------------------------------------------------------------- the p-value

    def p_value(
        self,
        sizes: np.ndarray,
        *,
        seed: int,
        level: float,
        own_p: Sequence[float] | None = None,
    ) -> FamilyResult:
        """The family p-value of the observed ``sizes`` (see the module docstring).

        ``level`` (the smallest level the family can be tested at) sets the most
        draws, :func:`max_draws`; ``own_p`` are the members' own valid p-values
        (for the :data:`GROSS` shortcut).
        """
        obs = self.member_p(self.observed_summary(sizes))[0]
        j = len(self.members)
        if own_p is not None and j * min(own_p) <= GROSS:
            p = float(max(j * min(own_p), 0.0))
            per = tuple(float(min(1.0, j * x)) for x in own_p)
            return FamilyResult(p, self.members, per, tuple(map(float, obs)), 0, "bonferroni")
        s_obs = float(obs.min())
        rng = np.random.default_rng([int(seed), 0x5123, self.steps])
        mark = rng.random()
        n = max_draws(level) + 1  # B&C's n: at most n − 1 draws
        thresholds = np.asarray(obs, dtype=np.float64)
        member_hits = np.zeros(j, dtype=np.int64)
        hits = draws = 0
        stop_at = None
        block = 128
        while draws < n - 1:
            size = min(block, n - 1 - draws)
            hist = rng.multinomial(self.steps, self.probs, size=size)
            sm, outside = self._draw_summary(hist)
            s_sim = self.member_p(sm).min(axis=1)
            marks = rng.random(size)
            tie = np.abs(s_sim - s_obs) <= _TIE * np.maximum(s_sim, s_obs)
            extreme = outside | (s_sim < s_obs) & ~tie | tie & (marks < mark)
            cum = hits + np.cumsum(extreme)
            if cum[-1] >= STOP_HITS:
                last = int(np.argmax(cum >= STOP_HITS))  # the h-th hit, 0-based in the block
                kept = slice(0, last + 1)
                stop_at = draws + last + 1
            else:
                kept = slice(0, size)
            member_hits += np.sum(
                outside[kept, None] | (s_sim[kept, None] <= thresholds[None, :] * (1 + _TIE)), axis=0
            )
            if stop_at is not None:
                hits, draws = STOP_HITS, stop_at
                break
            hits, draws = int(cum[-1]), draws + size
            block = min(4 * block, 16_384)
        v = rng.random()
        if stop_at is not None:  # p = h/L, next support point below: h/(L + 1)
            hi, lo = STOP_HITS / draws, STOP_HITS / (draws + 1)
        else:  # p = (g + 1)/n, next below: g/n
            hi, lo = (hits + 1) / n, hits / n
        p = lo + v * (hi - lo)
        if own_p is not None:  # above the Bonferroni shortcut's range (see the module docstring)
            p = GROSS + (1.0 - GROSS) * p
        adjusted: list[float] = []
        argmin = int(np.argmin(obs))
        for i in range(j):
            if i == argmin:
                adjusted.append(p)
            else:
                adjusted.append(max(p, min(1.0, (member_hits[i] + 1.0) / (draws + 1.0))))
        return FamilyResult(
            float(p), self.members, tuple(adjusted), tuple(map(float, obs)), draws, "monte carlo"
        )
