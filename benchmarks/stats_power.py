"""Power of the sampling check against an undeclared cap (pile-up at the largest batch size).

jax_privacy's truncated Poisson sampling clips a batch to ``cap`` examples:
``min(Binomial(N, q), cap)``.  At N = 10⁴, q = 0.01 (expected batch 100, sd
9.95) a cap at mean + 2.2 sd is 122: about 1.2% of batches would be larger,
so they all sit exactly at 122 and none above.  Declared as plain Poisson,
each ledger is audited by the whole battery (:func:`dpverify.stats.run_battery`,
α = 10⁻³ family-wise); the power is the fraction of seeds refuted, and the
fraction whose headline names the cap.  The honest counterpart (same seeds,
no cap) gives the false-refutation rate next to it.

Prints one JSON line per (T, cap) setting.  Usage:
``python benchmarks/stats_power.py [--seeds 200] [--steps 1000 500]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
from scipy import stats


def _truncated(seed: int, n: int, q: float, steps: int, cap: int | None) -> list[np.ndarray]:
    rng = np.random.Generator(np.random.PCG64([seed, 77]))
    out = []
    for _ in range(steps):
        size = int(rng.binomial(n, q))
        if cap is not None:
            size = min(size, cap)
        out.append(np.sort(rng.choice(n, size, replace=False)))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    from dpverify.stats import run_battery

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--steps", type=int, nargs="*", default=[1000, 500])
    parser.add_argument("--dataset-size", type=int, default=10_000)
    parser.add_argument("--sampling-rate", type=float, default=0.01)
    parser.add_argument("--sd-above-mean", type=float, default=2.2)
    parser.add_argument("--alpha", type=float, default=1e-3)
    args = parser.parse_args(argv)
    n, q = args.dataset_size, args.sampling_rate
    mean, sd = n * q, math.sqrt(n * q * (1 - q))
    cap = round(mean + args.sd_above_mean * sd)  # 122 at the defaults, as in the issue
    rows = []
    for steps in args.steps:
        for capped in (True, False):
            start = time.process_time()
            refuted = named = at_cap = 0
            for seed in range(args.seeds):
                batches = _truncated(seed, n, q, steps, cap if capped else None)
                at_cap += sum(b.size == cap for b in batches)
                res = run_battery(batches, dataset_size=n, sampling_rate=q, alpha=args.alpha)
                if not res.passed:
                    refuted += 1
                    named += "undeclared cap on batch size" in res.diagnosis
            row = {
                "benchmark": "stats_power_pileup",
                "N": n,
                "q": q,
                "T": steps,
                "cap": cap if capped else None,
                "seeds": args.seeds,
                "alpha": args.alpha,
                "refuted": refuted,
                "rate": refuted / args.seeds,
                # one-sided 95% Clopper-Pearson lower bound on the rate
                "rate_lower_95": float(stats.beta.ppf(0.05, refuted, args.seeds - refuted + 1))
                if refuted
                else 0.0,
                "headline_names_cap": named,
                "mean_batches_at_cap": at_cap / args.seeds,
                "cpu_s": round(time.process_time() - start, 1),
                "load_avg_1m": os.getloadavg()[0],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
