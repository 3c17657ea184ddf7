"""False-refutation rate of the whole sampling check over honest ledgers, per regime.

For every regime q·N ∈ {0.5, 2, 4, 8, 100} × N ∈ {10, 1000, 60 000} × T ∈ {500, 10⁴}
(q·N ≤ N), honest Poisson ledgers are drawn from three independent generators —
numpy PCG64, numpy Philox and Python's ``random`` (Mersenne Twister) — and the
whole battery (:func:`dpverify.stats.run_battery`, every test, Holm) is run at
family-wise level α (default 0.05, so that 1000 ledgers resolve the rate).
Ledger i of a regime uses generator i mod 3 with its own seed.

A ledger is the set of successes of a Bernoulli(q) sequence of length N·T,
drawn by its geometric gaps (exactly i.i.d. Bernoulli(q) inclusions; the
sampler under test, dpverify's PoissonSampler, is *not* used), cut into T
batches.

Output: one JSON line per regime with the number of ledgers, rejections, the
rate, the binomial 99% acceptance interval of α for that number, whether the
rate lies in it, the per-generator rates, and which tests rejected; then a
summary line.  ``--time-budget`` (seconds per regime) and ``--stop-at`` (a
Unix time) stop a regime early and say so (``"complete": false``): on a shared
machine the cheap regimes (run first) reach the target and the costliest ones
(q·N = 100, T = 10⁴: about 0.5 CPU-s per ledger) get the time that is left.
``--workers`` runs regimes in parallel.

The battery runs with its default seed (0), as the audit does.

Usage: ``python benchmarks/stats_calibration.py [--reps 1000] [--alpha 0.05]
[--time-budget 600] [--stop-at UNIX_TIME] [--workers 2] [--only qn,N,T ...]
[--longest-first] [--label TEXT]``;
``--render OUT.jsonl`` prints the Markdown table of an output.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import stats

QN = (0.5, 2.0, 4.0, 8.0, 100.0)
NS = (10, 1000, 60_000)
TS = (500, 10_000)
GENERATORS = ("pcg64", "philox", "python_random")


def _positions_numpy(rng: np.random.Generator, q: float, length: int) -> np.ndarray:
    """Success positions of a Bernoulli(q) sequence of ``length`` (geometric gaps)."""
    out, pos = [], -1
    block = max(16, int(1.2 * q * length) + 64)
    while True:
        gaps = rng.geometric(q, size=block)
        p = pos + np.cumsum(gaps)
        out.append(p[p < length])
        if p[-1] >= length:
            return np.concatenate(out)
        pos = int(p[-1])


def _positions_python(rnd: random.Random, q: float, length: int) -> np.ndarray:
    """The same with Python's Mersenne Twister: gap = 1 + floor(log(1 − U) / log(1 − q))."""
    out = []
    pos = -1
    lq = math.log1p(-q) if q < 1.0 else -math.inf
    rand, log = rnd.random, math.log
    while True:
        u = rand()
        gap = 1 if lq == -math.inf else 1 + int(log(1.0 - u) / lq)
        pos += gap
        if pos >= length:
            return np.asarray(out, dtype=np.int64)
        out.append(pos)


def honest_ledger(generator: str, seed: int, n: int, q: float, steps: int) -> list[np.ndarray]:
    """T sorted batches of independent Bernoulli(q) inclusions of N examples."""
    if generator == "pcg64":
        pos = _positions_numpy(np.random.Generator(np.random.PCG64(seed)), q, n * steps)
    elif generator == "philox":
        pos = _positions_numpy(np.random.Generator(np.random.Philox(seed)), q, n * steps)
    else:
        pos = _positions_python(random.Random(seed), q, n * steps)
    step, idx = np.divmod(pos.astype(np.int64), n)
    return np.split(idx, np.searchsorted(step, np.arange(1, steps)))


def run_regime(spec: tuple[float, int, int, int, float, float, int, float, str]) -> dict:
    from dpverify.stats import run_battery

    qn, n, steps, reps, alpha, budget, base_seed, stop_at, label = spec
    q = qn / n
    start = time.perf_counter()
    cpu0 = time.process_time()
    done = rejected = 0
    per_gen = {g: [0, 0] for g in GENERATORS}
    tests: collections.Counter[str] = collections.Counter()
    for i in range(reps):
        if time.perf_counter() - start > budget or time.time() > stop_at:
            break
        gen = GENERATORS[i % 3]
        seed = base_seed * 1_000_003 + i
        res = run_battery(honest_ledger(gen, seed, n, q, steps), dataset_size=n, sampling_rate=q, alpha=alpha)
        done += 1
        per_gen[gen][0] += 1
        if not res.passed:
            rejected += 1
            per_gen[gen][1] += 1
            tests.update(t.name for t in res.failures)
    lo, hi = (x / done for x in stats.binom.interval(0.99, done, alpha)) if done else (0.0, 1.0)
    rate = rejected / done if done else float("nan")
    gens = {}
    for g, (m, r) in per_gen.items():
        glo, ghi = (x / m for x in stats.binom.interval(0.99, m, alpha)) if m else (0.0, 1.0)
        gens[g] = {"ledgers": m, "rate": r / m if m else None, "in_99": bool(m and glo <= r / m <= ghi)}
    return {
        "qN": qn,
        "N": n,
        "T": steps,
        "q": q,
        "alpha": alpha,
        "ledgers": done,
        "complete": done == reps,
        "rejected": rejected,
        "rate": rate,
        "interval_99": [lo, hi],
        "in_interval": bool(done and lo <= rate <= hi),
        "generators": gens,
        "rejecting_tests": dict(tests),
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **({"source": label} if label else {}),
    }


def render(path: str) -> str:
    """The Markdown table of a JSONL output of this script (for docs/statistics.md)."""
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if '"qN"' in line]
    rows.sort(key=lambda r: (r["T"], r["N"], r["qN"]))
    out = [
        "| T | N | q·N | ledgers | rejected | rate | 99 % interval of α | in it | PCG64 | Philox | `random` |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r["generators"]
        lo, hi = r["interval_99"]
        cells = [
            f"{r['T']:,}",
            f"{r['N']:,}",
            f"{r['qN']:g}",
            f"{r['ledgers']}" + ("" if r["complete"] else " (time-boxed)"),
            str(r["rejected"]),
            f"{r['rate']:.3f}" if r["ledgers"] else "–",
            f"[{lo:.3f}, {hi:.3f}]" if r["ledgers"] else "–",
            "not run"
            if not r["ledgers"]
            else ("yes" if r["in_interval"] else ("below" if r["rate"] < lo else "ABOVE")),
            *(f"{g[k]['rate']:.3f}" if g[k]["rate"] is not None else "–" for k in GENERATORS),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--time-budget", type=float, default=1e9, help="seconds per regime")
    parser.add_argument("--stop-at", type=float, default=math.inf, help="Unix time to stop at")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--only", nargs="*", default=None, help="regimes as qn,N,T")
    parser.add_argument(
        "--longest-first",
        action="store_true",
        help="run the costliest regimes first (T, then q·N, descending): balances the workers",
    )
    parser.add_argument("--label", default="", help="a note stored in every row (commit, time)")
    parser.add_argument("--render", default=None, help="print the Markdown table of a JSONL output")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return []
    regimes = [(qn, n, t) for t in TS for n in NS for qn in QN if qn <= n]
    regimes.sort(key=lambda r: (r[0] >= 100 and r[2] > 500, r[2], r[0]))  # cheapest first
    if args.longest_first:
        regimes.sort(key=lambda r: (r[2], r[0], r[1]), reverse=True)
    if args.only:
        wanted = {tuple(float(x) for x in s.split(",")) for s in args.only}
        regimes = [r for r in regimes if (r[0], float(r[1]), float(r[2])) in wanted]
    specs = [
        (qn, n, t, args.reps, args.alpha, args.time_budget, args.seed + k, args.stop_at, args.label)
        for k, (qn, n, t) in enumerate(regimes)
    ]
    rows = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for row in pool.map(run_regime, specs, chunksize=1):
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(
        json.dumps(
            {
                "summary": True,
                "regimes": len(rows),
                "all_complete": all(r["complete"] for r in rows),
                "all_in_interval": all(r["in_interval"] for r in rows),
                "ledgers": sum(r["ledgers"] for r in rows),
                "load_avg_1m": os.getloadavg()[0],
            }
        ),
        flush=True,
    )
    return rows


if __name__ == "__main__":
    main()
