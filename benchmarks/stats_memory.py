"""Bounded memory at any N: audit a ledger over N = 10⁹ examples at q = 10⁻⁸.

Writes an honest Poisson ledger (about 10 indices per step, 0.2 MB for the
default 2000 steps), then runs ``dpverify audit --no-replay --report`` on it in a child
process and reports the child's wall time and peak resident memory
(``ru_maxrss`` of the child).  Targets (issue 10, item 8): <= 2 GB and <= 60 s.
Per-example state above 2²⁴ examples is kept for the examples seen only
(``dpverify.stats._stream``), and the batch hash needs no table.

Prints one JSON line.  Usage: ``python benchmarks/stats_memory.py [--dataset-size 1e9]
[--sampling-rate 1e-8] [--steps 2000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _write(path: Path, n: int, q: float, steps: int, seed: int) -> int:
    from dpverify.ledger import LedgerWriter, RunHeader, Seal, Step

    header = RunHeader(
        dataset_size=n,
        sampler="poisson",
        sampling_rate=q,
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=1e-10,
        claimed_epsilon=100.0,
    )
    rng = np.random.default_rng(seed)
    with LedgerWriter.create(path, header) as w:
        for t in range(steps):
            size = int(rng.binomial(n, q))
            idx = np.unique(rng.integers(0, n, size=size))
            while idx.size < size:  # resolve the (rare) duplicates
                idx = np.unique(np.concatenate((idx, rng.integers(0, n, size=size - idx.size))))
            w.append(Step(step=t, indices=idx.astype(np.int64), sampling_rate=q))
        w.close(Seal(steps_executed=steps, final_step=steps, claimed_epsilon=100.0, delta=1e-10))
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-size", type=float, default=1e9)
    parser.add_argument("--sampling-rate", type=float, default=1e-8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = int(args.dataset_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger"
        size = _write(path, n, args.sampling_rate, args.steps, args.seed)
        report = Path(tmp) / "report.md"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "dpverify", "audit", str(path), "--no-replay", "--report", str(report)],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            check=False,
        )
        wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    out = {
        "benchmark": "stats_memory",
        "dataset_size": n,
        "sampling_rate": args.sampling_rate,
        "steps": args.steps,
        "ledger_bytes": size,
        "audit_wall_s": round(wall, 2),
        "audit_peak_rss_gb": round(peak, 3),
        "exit_code": proc.returncode,
        "verdict_line": (proc.stdout.strip().splitlines() or [""])[0][:200],
        "stderr_tail": proc.stderr.strip()[-300:],
        "within_targets": peak <= 2.0 and wall <= 60.0 and proc.returncode in (0, 1),
        "python": platform.python_version(),
        "load_avg_1m": os.getloadavg()[0],
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
