"""Lower tails of every test of the sampling battery at α = 10⁻³, over honest ledgers.

The family-wise false-refutation table (``benchmarks/stats_calibration.py``)
runs at α = 0.05; an auditor runs at α = 10⁻³, where each voting test gets
about α/10 = 10⁻⁴ and a null whose *tail* is too light (a normal or
two-moment approximation of a discrete or dependent statistic) refutes honest
runs far more often than α even when it looks fine at 0.05.  This study
records **every test's raw p-value** on each honest ledger and reports, per
regime and test, the fraction of meaningful p-values below 10⁻², 10⁻³ and
10⁻⁴ against the nominal level (Clopper-Pearson 95 % intervals), the smallest
p-values next to their uniform order-statistic expectations (a tail QQ), and
the family verdict at α = 10⁻³.  The batch-size tests vote as one family;
its p-value is reported as the pseudo-test ``size_family``.

Honest ledgers come from three independent generators and two constructions:

* ``subset``: size ~ Binomial(N, q), then a uniform subset of that size —
  numpy ``Generator.choice(N, size, replace=False)`` on PCG64 or Philox, or
  ``random.sample`` with Python's Mersenne Twister (size by inversion);
  ``pcg64_77`` is exactly the honest arm of ``benchmarks/stats_power.py``
  (``PCG64([seed, 77])``);
* ``bernoulli``: i.i.d. Bernoulli(q) inclusions by geometric gaps
  (``benchmarks/stats_calibration.honest_ledger``).

Output: one JSON line per (regime, generator) and one per regime (all
generators pooled, ``"generator": "all"``).  ``--raw FILE`` also writes one
line per ledger with every test's p-value.

``--nulls`` instead checks single tests' null approximations against direct
simulation of the exact null, at a resolution the whole battery cannot reach
(10⁵–10⁶ draws): the batch-size tests T1/T2 (sizes i.i.d. from the size law)
with the χ² tails they used before and with the exact Monte Carlo tails they
use now, and T5 (a sum of independent hypergeometrics given the sizes).
Usage::

    python benchmarks/stats_tails.py [--ledgers 600] [--regimes power small2 ...]
        [--stop-at UNIX_TIME] [--raw raw.jsonl] > benchmarks/results/stats_tails.jsonl
    python benchmarks/stats_tails.py --nulls [--draws 1000000] >> benchmarks/results/stats_tails.jsonl
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import math
import os
import random
import sys
import time

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stats_calibration import honest_ledger

#: name -> (N, q·N, T, construction)
REGIMES = {
    "power": (10_000, 100.0, 1000, "subset"),  # the stats_power honest arm
    "power500": (10_000, 100.0, 500, "subset"),
    "small2": (1000, 2.0, 2000, "subset"),
    "small8": (1000, 8.0, 2000, "bernoulli"),
    "tiny": (10, 2.0, 2000, "bernoulli"),
    "half": (1000, 0.5, 4000, "bernoulli"),
}
GENERATORS = ("pcg64", "philox", "python_random", "pcg64_77")
LEVELS = (1e-2, 1e-3, 1e-4)
ALPHA = 1e-3
QQ_POINTS = 10


def _subset_ledger(generator: str, seed: int, n: int, q: float, steps: int) -> list[np.ndarray]:
    if generator == "python_random":
        rnd = random.Random(seed)
        law = stats.binom(n, q)
        out = []
        for _ in range(steps):
            size = int(law.ppf(rnd.random()))
            out.append(np.sort(np.asarray(rnd.sample(range(n), size), dtype=np.int64)))
        return out
    if generator == "pcg64_77":
        rng = np.random.Generator(np.random.PCG64([seed, 77]))
    elif generator == "pcg64":
        rng = np.random.Generator(np.random.PCG64(seed))
    else:
        rng = np.random.Generator(np.random.Philox(seed))
    out = []
    for _ in range(steps):
        size = int(rng.binomial(n, q))
        out.append(np.sort(rng.choice(n, size, replace=False)))
    return out


def ledger(
    construction: str, generator: str, seed: int, n: int, q: float, steps: int
) -> list[np.ndarray]:
    if construction == "subset":
        return _subset_ledger(generator, seed, n, q, steps)
    gen = "pcg64" if generator == "pcg64_77" else generator
    return honest_ledger(gen, seed, n, q, steps)


def _interval(k: int, m: int) -> list[float]:
    lo = float(stats.beta.ppf(0.025, k, m - k + 1)) if k else 0.0
    hi = float(stats.beta.ppf(0.975, k + 1, m - k)) if k < m else 1.0
    return [lo, hi]


def summarise(regime: str, generator: str, records: list[dict]) -> dict:
    n, qn, steps, construction = REGIMES[regime]
    m = len(records)
    refuted = sum(not r["passed"] for r in records)
    tests: dict[str, dict] = {}
    names = sorted({name for r in records for name in r["p"]})
    for name in names:
        ps = sorted(r["p"][name] for r in records if name in r["meaningful"])
        k = len(ps)
        row: dict = {"meaningful": k}
        for level in LEVELS:
            c = bisect.bisect_right(ps, level)
            row[f"below_{level:g}"] = c
            row[f"ci95_{level:g}"] = _interval(c, k) if k else None
        # tail QQ: the smallest p-values against E[U_(i)] = i/(k+1)
        row["smallest"] = [float(f"{p:.3g}") for p in ps[:QQ_POINTS]]
        row["expected_smallest"] = [
            float(f"{(i + 1) / (k + 1):.3g}") for i in range(min(QQ_POINTS, k))
        ]
        row["rejected_in_battery"] = sum(name in r["rejected"] for r in records)
        tests[name] = row
    return {
        "benchmark": "stats_tails",
        "regime": regime,
        "N": n,
        "qN": qn,
        "T": steps,
        "construction": construction,
        "generator": generator,
        "alpha": ALPHA,
        "ledgers": m,
        "refuted": refuted,
        "refuted_rate": refuted / m if m else None,
        "refuted_ci95": _interval(refuted, m) if m else None,
        "tests": tests,
    }


#: (N, q·N, T) of the null checks
NULL_REGIMES = ((1000, 0.5, 500), (1000, 2.0, 500), (10, 2.0, 500), (10_000, 100.0, 1000))


def _rates(ps: np.ndarray, draws: int) -> dict:
    return {
        f"{level:g}": {"count": int(np.count_nonzero(ps < level)), "expected": level * draws}
        for level in (*LEVELS, 1e-5)
    }


def null_checks(draws: int) -> list[dict]:
    """T1/T2 old χ² tails and T5's null against direct simulation of the exact null."""
    from dpverify.stats._nulls import SizeLaw, count_tails, two_sided
    from dpverify.stats._size_tests import _bins, batch_size_dispersion

    rows = []
    for n, qn, steps in NULL_REGIMES:
        q = qn / n
        law = SizeLaw(dataset_size=n, sampling_rate=q)
        rng = np.random.default_rng([n, steps, 1])
        kurt = law.central_moment(4) / law.var**2
        nu = 2.0 * steps / (kurt - 1.0)
        c = steps / nu
        edges = _bins(law, steps)
        cum = np.array([law.cdf(e) for e in edges[:-1]] + [1.0])
        probs = np.diff(np.concatenate(([0.0], cum)))
        d_all, p1, p2 = [], [], []
        for start in range(0, draws, 5000):
            sizes = rng.binomial(n, q, size=(min(5000, draws - start), steps))
            d = ((sizes - law.mean) ** 2).sum(axis=1) / law.var
            lo, hi = stats.chi2.cdf(d / c, nu), stats.chi2.sf(d / c, nu)
            p1.append(np.minimum(1.0, 2.0 * np.minimum(lo, hi)))
            which = np.minimum(np.searchsorted(edges, sizes, side="left"), edges.size - 1)
            counts = np.stack([np.bincount(w, minlength=edges.size) for w in which])
            e = steps * probs
            p2.append(stats.chi2.sf(((counts - e) ** 2 / e).sum(axis=1), edges.size - 1))
            d_all.append(d)
        d_all = np.concatenate(d_all)
        # the exact (Monte Carlo) upper tail of T1 now, at the null's own upper quantiles
        agreement = []
        for tail in (1e-2, 1e-3, 2e-4):
            target = float(np.quantile(d_all, 1.0 - tail))
            probe = rng.binomial(n, q, size=(20_000, steps))
            dd = ((probe - law.mean) ** 2).sum(axis=1) / law.var
            above = np.flatnonzero(dd >= target)
            if above.size == 0:  # no probe reached this quantile
                agreement.append(
                    {"tail": tail, "direct_upper_tail": None, "battery_upper_tail": None}
                )
                continue
            pick = probe[int(above[np.argmin(dd[above])])]
            d_pick = float(((pick - law.mean) ** 2).sum() / law.var)
            res = batch_size_dispersion(pick, law)
            agreement.append(
                {
                    "tail": tail,
                    "direct_upper_tail": float(np.mean(d_all >= d_pick - 1e-9)),
                    "battery_upper_tail": res.p_value / 2.0,
                    "by": res.details["upper_tail"],
                }
            )
        rows.append(
            {
                "benchmark": "stats_tails_nulls",
                "N": n,
                "qN": qn,
                "T": steps,
                "draws": draws,
                "T1_chi2_before": _rates(np.concatenate(p1), draws),
                "T2_chi2_before": _rates(np.concatenate(p2), draws),
                "T1_exact_now_vs_direct": agreement,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    # T5 at the stats_power regime: a sum of independent hypergeometrics given the sizes
    n, q, steps, reps = 10_000, 0.01, 1000, max(1, draws // 5)
    rng = np.random.default_rng(11)
    sizes = rng.binomial(n, q, size=steps)
    a, b = sizes[1:], sizes[:-1]
    mean = float(a @ b) / n
    var = float((a * (n - a)) @ (b * (n - b))) / (n * n * (n - 1.0))
    x = np.zeros(reps, dtype=np.int64)
    for t in range(steps - 1):
        if a[t] and b[t]:
            x += rng.hypergeometric(a[t], n - a[t], b[t], size=reps)
    values, inverse = np.unique(x, return_inverse=True)
    pv = np.array([two_sided(*count_tails(v, mean, var)) for v in values])[inverse]
    z = (x - mean) / math.sqrt(var)
    row = {
        "benchmark": "stats_tails_nulls",
        "test": "consecutive_overlap",
        "N": n,
        "qN": n * q,
        "T": steps,
        "draws": reps,
        "p_values": _rates(pv, reps),
        "abs_z_above_4": {"count": int(np.count_nonzero(abs(z) > 4)), "normal": reps * 6.33e-5},
    }
    print(json.dumps(row), flush=True)
    rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    from dpverify.stats import run_battery

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledgers", type=int, default=600, help="per regime and generator")
    parser.add_argument("--regimes", nargs="*", default=list(REGIMES))
    parser.add_argument("--generators", nargs="*", default=list(GENERATORS))
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument(
        "--stop-at", type=float, default=math.inf, help="Unix time: stop and summarise"
    )
    parser.add_argument("--raw", default=None, help="also write one line per ledger here")
    parser.add_argument("--nulls", action="store_true", help="check single tests' nulls instead")
    parser.add_argument("--draws", type=int, default=1_000_000, help="draws per null check")
    args = parser.parse_args(argv)
    if args.nulls:
        return null_checks(args.draws)
    raw = open(args.raw, "a", encoding="utf-8") if args.raw else None
    rows = []
    for regime in args.regimes:
        n, qn, steps, construction = REGIMES[regime]
        q = qn / n
        by_gen: dict[str, list[dict]] = collections.defaultdict(list)
        cpu0 = time.process_time()
        stopped = False
        # generators interleaved so that a stop leaves them balanced
        for i in range(args.ledgers):
            for gen in args.generators:
                if time.time() > args.stop_at:
                    stopped = True
                    break
                seed = args.seed + i
                res = run_battery(
                    ledger(construction, gen, seed, n, q, steps),
                    dataset_size=n,
                    sampling_rate=q,
                    alpha=ALPHA,
                )
                rec = {
                    "regime": regime,
                    "generator": gen,
                    "seed": seed,
                    "passed": res.passed,
                    "p": {t.name: t.p_value for t in res.tests},
                    "meaningful": [t.name for t in res.tests if t.meaningful],
                    "rejected": [t.name for t in res.tests if t.rejected],
                }
                family = next((t.details["size_family"] for t in res.tests if "size_family" in t.details), None)
                if family is not None:  # the batch-size family's own p-value (one vote)
                    rec["p"]["size_family"] = family["p_value"]
                    rec["meaningful"].append("size_family")
                by_gen[gen].append(rec)
                if raw:
                    raw.write(json.dumps(rec) + "\n")
            if stopped:
                break
        pooled = [r for g in args.generators for r in by_gen[g]]
        for gen in [*args.generators, "all"]:
            row = summarise(regime, gen, pooled if gen == "all" else by_gen[gen])
            row.update(
                cpu_s=round(time.process_time() - cpu0, 1),
                complete=not stopped,
                load_avg_1m=round(os.getloadavg()[0], 1),
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
        if stopped:
            break
    if raw:
        raw.close()
    return rows


if __name__ == "__main__":
    main()
