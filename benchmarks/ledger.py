"""Ledger benchmark: size against the entropy bound, append rate, decode rate.

Prints one JSON object per line:

* ``size``: index-block bytes per step against N·H(q)/8, and whole-record bytes
  per step (framing, hash chain and per-step fields included);
* ``append``: Step records per second through ``LedgerWriter.append`` into a
  fresh ledger on the local disk, with the durability policy stated (write +
  fsync every ``group_commit`` records and at close);
* ``decode``: indices per second of ``decode_many`` (the vectorised codec, 256
  blocks per call) and of ``read_ledger`` end to end (framing, CRC, SHA-256
  chain, payload, Step objects).

Rates are given per wall-clock second and per CPU second of this process
(``*_per_cpu_s``): on a shared machine the CPU-time rate is the fairer
measure of the code; it excludes time waiting for fsync.

Usage: ``python benchmarks/ledger.py [--steps 20000] [--group-commit 64]``.
Sampling uses Bernoulli(q) gaps (geometric), i.e. exact Poisson sampling.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from dpverify.ledger import LedgerWriter, RunHeader, Seal, Step, decode_many, read_ledger
from dpverify.ledger.codec import encode_many

CONFIGS = ((60_000, 0.0043), (1_000_000, 1e-3))


def poisson_indices(rng: np.random.Generator, n: int, q: float) -> np.ndarray:
    """Indices of a Bernoulli(q) sample of range(n), drawn through geometric gaps."""
    out = []
    pos = -1
    while True:
        gaps = rng.geometric(q, size=int(n * q + 6 * math.sqrt(n * q) + 16))
        positions = pos + np.cumsum(gaps)
        out.append(positions[positions < n])
        if positions[-1] >= n:
            return np.concatenate(out).astype(np.int64)
        pos = int(positions[-1])


def entropy_bits(n: int, q: float) -> float:
    return n * -(q * math.log2(q) + (1 - q) * math.log2(1 - q))


def bench(n: int, q: float, steps: int, group_commits: list[int], workdir: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    sets = [poisson_indices(rng, n, q) for _ in range(steps)]
    total_indices = sum(int(s.size) for s in sets)
    header = RunHeader(
        dataset_size=n, sampler="poisson", sampling_rate=q, noise_multiplier=1.0,
        clip_norm=1.0, delta=1e-5,
    )  # fmt: skip
    common = {"N": n, "q": q, "steps": steps, "mean_batch": total_indices / steps}

    blocks = encode_many(sets[: min(steps, 2000)])
    block_bytes = float(np.mean([len(b) for b in blocks]))
    bound = entropy_bits(n, q) / 8

    t0 = time.perf_counter()
    records = [
        Step(step=t, indices=s, noise_std=1.0, num_clipped=3, max_grad_norm=1.7,
             max_clipped_norm=1.0, denominator=n * q, physical_batches=2)
        for t, s in enumerate(sets)
    ]  # fmt: skip
    construct_s = time.perf_counter() - t0

    path = workdir / f"ledger-{n}"
    appends = []
    for group_commit in group_commits:
        if path.exists():
            shutil.rmtree(path)
        t0, c0 = time.perf_counter(), time.process_time()
        with LedgerWriter.create(path, header, group_commit=group_commit) as w:
            for record in records:
                w.append(record)
            w.close(seal=Seal(steps_executed=steps, final_step=steps))
        append_s, append_cpu = time.perf_counter() - t0, time.process_time() - c0
        appends.append(
            {
                "bench": "append", **common,
                "steps_per_s": round(steps / append_s),
                "steps_per_cpu_s": round(steps / append_cpu),
                "steps_per_s_incl_step_construction": round(steps / (append_s + construct_s)),
                "fsync_policy": f"write+fdatasync every {group_commit} records on a background "
                "thread (at most one commit in flight); synchronous before each checkpoint "
                "record and at close",
            }
        )  # fmt: skip
    file_bytes = (path / "records.log").stat().st_size

    all_blocks = encode_many(sets)
    best = best_cpu = math.inf
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(all_blocks), 256):
            decode_many(all_blocks[i : i + 256])
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    ledger = read_ledger(path)
    read_s, read_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert len(ledger.steps) == steps
    shutil.rmtree(path)
    return [
        {
            "bench": "size", **common,
            "index_bytes_per_step": round(block_bytes, 2),
            "entropy_bytes_per_step": round(bound, 2),
            "ratio_to_entropy": round(block_bytes / bound, 4),
            "bytes_per_index": round(block_bytes * steps / total_indices, 4),
            "record_bytes_per_step": round(file_bytes / steps, 2),
        },
        *appends,
        {
            "bench": "decode", **common,
            "codec_indices_per_s": round(total_indices / best),
            "codec_indices_per_cpu_s": round(total_indices / best_cpu),
            "read_ledger_indices_per_s": round(total_indices / read_s),
            "read_ledger_indices_per_cpu_s": round(total_indices / read_cpu),
            "read_ledger_steps_per_s": round(steps / read_s),
        },
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="steps per configuration")
    parser.add_argument(
        "--group-commit", type=int, nargs="+", default=[64, 1024], help="records per fsync"
    )
    parser.add_argument("--dir", default=None, help="directory for the ledgers (default: temp)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dpverify-bench-", dir=args.dir))
    print(json.dumps({"bench": "machine", "python": platform.python_version(),
                      "numpy": np.__version__, "cpus": os.cpu_count(),
                      "load_avg": [round(x, 2) for x in os.getloadavg()]}))  # fmt: skip
    try:
        for n, q in CONFIGS:
            for line in bench(n, q, args.steps, args.group_commit, workdir):
                print(json.dumps(line), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
