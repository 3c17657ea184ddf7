"""Battery benchmark: the full Poisson-compliance battery over a large run.

Default size (issue 3): T = 10⁵ steps over N = 10⁶ examples at q = 10⁻³, i.e.
about 10⁸ recorded indices.  Batches stream from :class:`PoissonSampler` (or,
with ``--ledger DIR``, from a ledger written beforehand); the battery keeps
O(N + T) state, so memory does not grow with the number of indices.

Prints one JSON object:

* ``battery_wall_s`` / ``battery_cpu_s``: time spent in the battery itself
  (total minus the time spent drawing batches), wall clock and CPU of this
  process (the CPU figure is the fairer one on a shared machine);
* ``sampling_wall_s``: time spent drawing the batches;
* ``peak_rss_gb``: the process's peak resident memory (interpreter included),
  and ``baseline_rss_gb`` before the run;
* ``indices_per_s``: recorded indices per wall-clock second of the battery;
* the verdict (an honest sampler should pass).

Usage: ``python benchmarks/stats.py [--steps 100000] [--dataset-size 1000000]
[--sampling-rate 0.001] [--ledger DIR]``; ``--steps 2000`` is a quick run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

from dpverify.samplers import PoissonSampler
from dpverify.stats import battery_from_ledger, run_battery


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--dataset-size", type=int, default=1_000_000)
    parser.add_argument("--sampling-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ledger", default=None, help="run battery_from_ledger on this ledger instead"
    )
    parser.add_argument("--progress", action="store_true", help="show a progress bar (stderr)")
    args = parser.parse_args(argv)

    baseline = _rss_gb()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    sampling = [0.0, 0.0]  # wall, cpu spent drawing batches

    if args.ledger:
        result = battery_from_ledger(args.ledger)
    else:
        sampler = PoissonSampler(args.dataset_size, args.sampling_rate, seed=args.seed)
        steps = range(args.steps)
        if args.progress:
            from tqdm import tqdm

            steps = tqdm(steps, file=sys.stderr, unit="step")

        def batches():
            for t in steps:
                w, c = time.perf_counter(), time.process_time()
                batch = sampler.sample(t)
                sampling[0] += time.perf_counter() - w
                sampling[1] += time.process_time() - c
                yield batch

        result = run_battery(
            batches(), dataset_size=args.dataset_size, sampling_rate=args.sampling_rate
        )
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    report = {
        "benchmark": "stats.battery",
        "steps": result.steps,
        "dataset_size": result.dataset_size,
        "sampling_rate": result.sampling_rate,
        "indices": result.indices,
        "battery_wall_s": round(wall - sampling[0], 2),
        "battery_cpu_s": round(cpu - sampling[1], 2),
        "sampling_wall_s": round(sampling[0], 2),
        "indices_per_s": round(result.indices / max(wall - sampling[0], 1e-9)),
        "peak_rss_gb": round(_rss_gb(), 3),
        "baseline_rss_gb": round(baseline, 3),
        "passed": result.passed,
        "failures": [t.name for t in result.failures],
        "min_detectable_relative_bias": result.min_detectable_relative_bias,
        "machine": f"{platform.machine()} {platform.python_version()}",
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
