"""One-run privacy auditing: an empirical lower bound on ε from canary scores.

The experiment (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023, arXiv:2305.08846): m canaries, each included in
the training set independently with probability ½ (S_i ∈ {−1, +1}); after
training, an auditor scores each canary from the released model, guesses
"included" (+1) for the k₊ highest scores and "excluded" (−1) for the k₋
lowest, and abstains on the rest.  With r = k₊ + k₋ guesses, let W be the
number of correct ones.

Null hypothesis: the training algorithm is (ε, δ)-DP with respect to each
canary (add/remove).  Their Theorem 3.1 (δ = 0) says W is stochastically
dominated by Binomial(r, p_ε) with p_ε = e^ε/(1 + e^ε); with δ > 0 (their
Section 5 and Appendix code, "Algorithm 2"):

    P[W ≥ v] ≤ β(v) + 2·m·δ · max_{1≤i≤v} (β(v − i) − β(v)) / i,
    β(u) = P[Binomial(r, p_ε) ≥ u].

That right-hand side is the p-value of ``v`` correct guesses at ε
(:func:`p_value`); it increases with ε.  The lower bound at confidence
1 − a is the largest ε whose p-value is ≤ a (:func:`epsilon_from_counts`):
an algorithm that really is (ε, δ)-DP for some ε at or above it would produce
that many correct guesses with probability ≤ a.

Choosing k₊, k₋ after looking at the scores is a multiple comparison: this
module tries a fixed family of H guess sets (:func:`guess_family`) and tests
each at level a/H (Bonferroni), so the reported bound is valid at confidence
1 − a whatever the family's winner.  ``guesses="thresholds"`` is the family
of every one-sided threshold (k₋ = 0, k₊ = 0 … m; H = m + 1).  (For one fixed
guess set the p-value is the same as
``jax_privacy.auditing.CanaryScoreAuditor.epsilon_one_run`` with an
``Explicit`` threshold; its default ``Bonferroni`` strategy divides by the
number of thresholds on the ROC curve's convex hull, a set chosen with the
inclusion labels, so it can only report more than ``"thresholds"`` here.)

Ties: canaries are ranked by score, ties broken by canary position (which is
independent of the inclusion bits), so the guesses stay a function of the
released output only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import special

from dpverify._validate import check_choice, check_probability
from dpverify.errors import InvalidArgument

__all__ = [
    "GUESS_FAMILIES",
    "METHOD",
    "OneRunAudit",
    "audit_scores",
    "correct_guesses",
    "epsilon_from_counts",
    "guess_family",
    "p_value",
]

#: Names of the guess-set families :func:`audit_scores` accepts.
GUESS_FAMILIES = ("two_sided", "one_sided", "thresholds")
#: The method tag written into certificates.
METHOD = "steinke2023-one-run"

_EPS_MAX = 200.0  # p_ε is 1 - 1e-87 there: beyond anything counts can show
_EPS_TOL = 1e-6


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[W ≥ v] under (ε, δ)-DP, for ``r`` guesses among ``m`` canaries.

    Args:
        m: number of canaries (included and excluded).
        r: number of guesses (abstentions excluded), ``0 ≤ r ≤ m``.
        v: number of correct guesses, ``0 ≤ v ≤ r``.
        epsilon: ε ≥ 0 of the null hypothesis.
        delta: δ in [0, 1] of the null hypothesis.

    Returns:
        The bound β(v) + 2mδ·max_i (β(v−i) − β(v))/i, capped at 1
        (Steinke et al. 2023, Theorem 3.1 and Section 5).
    """
    _check_counts(m, r, v)
    _check_delta(delta)
    if not epsilon >= 0:
        raise InvalidArgument(f"epsilon={epsilon!r} must be >= 0")
    p = float(special.expit(epsilon))
    beta = float(special.bdtrc(v - 1, r, p))  # P[Binomial(r, p) > v - 1]
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    gaps = special.bdtrc(v - i - 1, r, p) - beta
    alpha = float(np.max(gaps / i))
    return min(beta + 2.0 * m * delta * alpha, 1.0)


def epsilon_from_counts(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """The largest ε whose :func:`p_value` is ≤ ``significance`` (0 when none is).

    Bisection to 1e-6 on ε, returning the lower end (a valid, conservative bound).
    """
    _check_counts(m, r, v)
    check_probability("significance", significance, allow_one=False)
    if p_value(m, r, v, 0.0, delta) > significance:
        return 0.0
    hi = 1.0
    while hi < _EPS_MAX and p_value(m, r, v, hi, delta) <= significance:
        hi *= 2.0
    if hi >= _EPS_MAX:
        return _EPS_MAX
    lo = hi / 2.0 if hi > 1.0 else 0.0
    while hi - lo > _EPS_TOL:
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) <= significance:
            lo = mid
        else:
            hi = mid
    return lo


def guess_family(m: int, guesses: str = "two_sided") -> list[tuple[int, int]]:
    """The fixed family of (k₊, k₋) guess sets tried on ``m`` canaries.

    * ``"one_sided"`` — k₋ = 0 and k₊ on a geometric grid of about 20 values
      in [1, m];
    * ``"two_sided"`` — the one-sided grid plus k₊ = k₋ = k on the same grid
      restricted to 2k ≤ m (the paper guesses at both ends);
    * ``"thresholds"`` — k₋ = 0, k₊ = 0 … m (every threshold; H = m + 1).

    The family depends on m only, never on the scores.
    """
    check_choice("guesses", guesses, GUESS_FAMILIES)
    if m < 1:
        raise InvalidArgument(f"m={m!r} must be >= 1 canary")
    if guesses == "thresholds":
        return [(k, 0) for k in range(m + 1)]
    grid = sorted({round(float(k)) for k in np.geomspace(1, m, num=min(m, 20))})
    family = [(k, 0) for k in grid]
    if guesses == "two_sided":
        family += [(k, k) for k in grid if 2 * k <= m]
    return family


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneRunAudit:
    """The result of :func:`audit_scores`.

    Attributes:
        epsilon_lower_bound: the largest ε rejected at ``confidence`` (0 when
            no ε is).
        confidence: 1 − the overall false-positive rate.
        delta: δ of the null hypotheses.
        canaries: m; ``included``: how many were included.
        guesses, correct: r and v of the guess set that gave the bound.
        k_positive, k_negative: that guess set.
        hypotheses: H, the number of guess sets tried (each at (1 − confidence)/H).
        guess_family: the family's name; ``method``: :data:`METHOD`.
    """

    epsilon_lower_bound: float
    confidence: float
    delta: float
    canaries: int
    included: int
    guesses: int
    correct: int
    k_positive: int
    k_negative: int
    hypotheses: int
    guess_family: str
    method: str = METHOD

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (the certificate's ``empirical`` section uses it)."""
        return dataclasses.asdict(self)


def audit_scores(
    scores: Any,
    included: Any,
    *,
    delta: float,
    confidence: float = 0.95,
    guesses: str = "two_sided",
) -> OneRunAudit:
    """Empirical ε lower bound from canary scores (higher score = "included").

    Args:
        scores: one finite score per canary.
        included: the secret inclusion bits (bool), same length.
        delta: δ of the claim being tested, in [0, 1).
        confidence: in (0, 1); the bound exceeds the true ε with probability
            at most 1 − confidence.
        guesses: the guess-set family (:func:`guess_family`).

    Returns:
        The :class:`OneRunAudit` of the best guess set in the family.

    Raises:
        InvalidArgument: lengths differ, non-finite scores, no canaries, or
            parameters out of range.
    """
    s, b = _check_scores(scores, included)
    _check_delta(delta)
    check_probability("confidence", confidence, allow_one=False)
    m = s.size
    family = guess_family(m, guesses)
    level = (1.0 - confidence) / len(family)
    top_hits, bottom_misses = _ranked_counts(s, b)
    best = (0.0, 0, 0, 0, 0)
    for kp, kn in family:
        r = kp + kn
        if r == 0:
            continue
        v = int(top_hits[kp] + bottom_misses[kn])
        if 2 * v <= r:  # no better than chance: rejects no ε ≥ 0 at any level < ½
            continue
        if p_value(m, r, v, best[0], delta) > level:  # p grows with ε: cannot beat the best
            continue
        eps = epsilon_from_counts(m, r, v, delta, level)
        if eps > best[0]:
            best = (eps, r, v, kp, kn)
    eps, r, v, kp, kn = best
    return OneRunAudit(
        epsilon_lower_bound=eps,
        confidence=confidence,
        delta=delta,
        canaries=m,
        included=int(b.sum()),
        guesses=r,
        correct=v,
        k_positive=kp,
        k_negative=kn,
        hypotheses=len(family),
        guess_family=guesses,
    )


def correct_guesses(scores: Any, included: Any, k_positive: int, k_negative: int) -> int:
    """Correct guesses v when guessing "included" for the ``k_positive`` highest
    scores and "excluded" for the ``k_negative`` lowest (ties by position)."""
    s, b = _check_scores(scores, included)
    if k_positive < 0 or k_negative < 0 or k_positive + k_negative > s.size:
        raise InvalidArgument(
            f"k_positive={k_positive}, k_negative={k_negative} must be >= 0 with sum <= {s.size}"
        )
    top_hits, bottom_misses = _ranked_counts(s, b)
    return int(top_hits[k_positive] + bottom_misses[k_negative])


def _ranked_counts(s: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Included canaries among the top k, excluded among the bottom k, for k = 0 … m."""
    ranked = b[np.argsort(-s, kind="stable")]  # highest first; ties by position
    top_hits = np.concatenate([[0], np.cumsum(ranked)])
    bottom_misses = np.concatenate([[0], np.cumsum(~ranked[::-1])])
    return top_hits, bottom_misses


def _check_scores(scores: Any, included: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float).ravel()
    b = np.asarray(included).ravel()
    if s.size == 0:
        raise InvalidArgument("scores is empty: an audit needs at least one canary")
    if b.shape != s.shape:
        raise InvalidArgument(f"included has {b.size} bits for {s.size} scores")
    if b.dtype != bool:
        if not np.isin(b, (0, 1)).all():
            raise InvalidArgument("included must hold 0/1 or booleans")
        b = b.astype(bool)
    if not np.isfinite(s).all():
        raise InvalidArgument(f"scores holds {int(np.sum(~np.isfinite(s)))} non-finite value(s)")
    return s, b


def _check_counts(m: int, r: int, v: int) -> None:
    if not (0 <= v <= r <= m) or m < 1:
        raise InvalidArgument(f"counts m={m}, r={r}, v={v} must satisfy 0 <= v <= r <= m, m >= 1")
    if not all(isinstance(x, (int, np.integer)) for x in (m, r, v)):
        raise InvalidArgument(f"counts m={m!r}, r={r!r}, v={v!r} must be integers")


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
        raise InvalidArgument(f"delta={delta!r} must be a number in [0, 1)")
