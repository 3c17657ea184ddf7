"""Benchmark the auditor: audit time without replay, and replay cost per step.

Prints JSON lines:

* ``{"bench": "write_ledger", ...}`` — writing the benchmark ledger (setup, not audit time);
* ``{"bench": "audit_no_replay", "steps": 10000, "dataset_size": 60000,
  "sampling_rate": 0.004, "seconds": ..., "per_check": {...}}`` — ``run_audit``
  with replay disabled over a Poisson ledger of 10⁴ steps at N = 60 000,
  q = 0.004 (≈ 2.4·10⁶ recorded indices);
* ``{"bench": "replay_segment", "task": "digits-mlp", "steps_replayed": 25,
  "seconds_per_step": ...}`` — replaying one 25-step checkpoint segment of the
  demo's model and batch size (256) through the float64 reference trainer and
  comparing with the released checkpoint (after a warm-up replay that pays the
  one-off JAX start-up);
* ``{"bench": "replay_demo", "steps_replayed": ..., "replay_seconds": ...,
  "seconds_per_replayed_step": ..., "audit_seconds": ...}`` — the whole
  ``dpverify demo`` run (150 steps, a checkpoint every 25) trained, then
  audited with the default replay budget (50 steps: the final segment and one
  drawn at random).

Usage::

    python benchmarks/audit.py [--steps 10000] [--dataset-size 60000]
        [--sampling-rate 0.004] [--segment-steps 25] [--no-replay-bench]
        [--no-demo-bench] [--no-audit-bench]

ImageNet scale (``--scale imagenet``): jax_privacy's ImageNet configuration,
N = 1 281 167, q = 0.012788, T = 71 589 (≈ 1.17·10⁹ sampled indices;
``--fraction F`` runs the first F·T steps).  Prints

* ``{"bench": "imagenet_write", ...}`` — the ledger writer alone
  (``LedgerWriter.append`` + close, group commit 1024, indices drawn
  beforehand per chunk and not timed): steps/s and indices/s per wall and
  per CPU second, bytes per index; the sampler's own rate separately;
* ``{"bench": "imagenet_audit", ...}`` — ``run_audit(…, replay_steps=None)``
  (``dpverify audit --no-replay``) in a fresh process: wall and CPU seconds,
  seconds per check and per part of the one streaming pass (``read_pass_*``:
  verify + decode, battery, inclusion counts), that process's peak resident
  memory (``ru_maxrss``) and the load average; ``--processes P`` is
  ``run_audit``'s ``processes``.  CPU seconds include the audit's child
  processes (the early privacy accounting, the battery's helper:
  ``children_cpu_seconds``; their largest peak: ``children_peak_rss_mb``).  ``--battery-only LEDGER``
  times the sampling battery alone (``sampling_from_ledger(path)``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _write_poisson_ledger(path: Path, *, n: int, q: float, steps: int) -> float:
    from dpverify.accounting import epsilon_poisson
    from dpverify.ledger import LedgerWriter, RunHeader, Seal, Step
    from dpverify.samplers import PoissonSampler

    sigma, clip, delta = 1.0, 1.0, 1e-6
    claim = 1.05 * epsilon_poisson(q, sigma, steps, delta, accountant="pld")
    header = RunHeader(
        dataset_size=n,
        sampler="poisson",
        sampling_rate=q,
        noise_multiplier=sigma,
        clip_norm=clip,
        delta=delta,
        claimed_epsilon=claim,
        physical_batch_size=256,
    )
    sampler = PoissonSampler(n, q, seed=1)
    start = time.perf_counter()
    with LedgerWriter.create(path, header, group_commit=1024) as writer:
        for t in range(steps):
            idx = sampler.sample(t)
            writer.append(
                Step(
                    step=t,
                    indices=idx,
                    noise_std=sigma * clip,
                    noise_draws=1,
                    num_clipped=0,
                    max_grad_norm=0.5,
                    max_clipped_norm=0.5,
                    denominator=q * n,
                    physical_batches=max(1, -(-idx.size // 256)),
                )
            )
        writer.close(seal=Seal(steps_executed=steps, final_step=steps))
    return time.perf_counter() - start


def bench_audit(n: int, q: float, steps: int) -> None:
    from audits import run_audit
    from audits import runner as runner_module

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger"
        setup = _write_poisson_ledger(path, n=n, q=q, steps=steps)
        print(json.dumps({"bench": "write_ledger", "steps": steps, "seconds": round(setup, 3)}))
        timings: dict[str, float] = {}
        originals = {}
        for name in ("check_configuration", "check_sampling", "check_mechanics",
                     "check_privacy", "collect_evidence"):  # fmt: skip
            fn = getattr(runner_module, name)
            originals[name] = fn

            def timed(*a, _fn=fn, _name=name, **k):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    timings[_name] = round(time.perf_counter() - t0, 3)

            setattr(runner_module, name, timed)
        try:
            start = time.perf_counter()
            cert = run_audit(path, replay_steps=None)
            seconds = time.perf_counter() - start
        finally:
            for name, fn in originals.items():
                setattr(runner_module, name, fn)
        print(json.dumps({
            "bench": "audit_no_replay", "steps": steps, "dataset_size": n, "sampling_rate": q,
            "verdict": cert.verdict, "seconds": round(seconds, 3), "per_check": timings,
        }))  # fmt: skip


def bench_replay(segment_steps: int) -> None:
    """Seconds per replayed step: one checkpoint segment of the demo's model and batch."""
    from dpverify.ledger import read_ledger
    from dpverify.replay import checkpoint_segments
    from trainers.loop import TrainConfig, train
    from trainers.replay import replay_segments

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        config = TrainConfig(  # the demo's task and defaults (batch 256, Adam), shorter
            task="digits-mlp", steps=segment_steps + 1, seed=0, checkpoint_every=segment_steps
        )
        train(config, run, progress=False)
        ledger = read_ledger(run / "ledger")
        (seg, last), _ = checkpoint_segments(ledger)
        replay_segments(run, ledger, [last])  # warm-up: JAX start-up and tracing
        start, cpu0 = time.perf_counter(), time.process_time()
        result = replay_segments(run, ledger, [seg], diagnose=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
        print(json.dumps({
            "bench": "replay_segment", "task": "digits-mlp", "expected_batch_size": 256,
            "steps_replayed": seg.num_steps, "ok": all(o.ok for o in result.outcomes),
            "rel_deviation": result.outcomes[0].rel_deviation,
            "seconds_per_step": round(seconds / seg.num_steps, 3),
            "cpu_seconds_per_step": round(cpu / seg.num_steps, 3),
            "load_average": os.getloadavg()[0],
        }))  # fmt: skip


def bench_demo() -> None:
    """The whole ``dpverify demo`` run (150 steps, checkpoints every 25): audit and replay time."""
    import audits.runner as runner
    from audits import run_audit
    from audits.replay import DEFAULT_REPLAY_STEPS
    from trainers.loop import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "demo"
        start = time.perf_counter()
        train(TrainConfig(task="digits-mlp", seed=0), run, progress=False)
        train_seconds = time.perf_counter() - start
        timing: dict[str, float] = {}
        original = runner.check_replay

        def timed(*a, **k):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return original(*a, **k)
            finally:
                timing["replay"] = time.perf_counter() - t0
                timing["replay_cpu"] = time.process_time() - c0

        runner.check_replay = timed
        try:
            start = time.perf_counter()
            cert = run_audit(run, replay_seed=0)
            audit_seconds = time.perf_counter() - start
        finally:
            runner.check_replay = original
        replay = cert.check("replay")
        steps = replay.details.get("steps_replayed") or 0
        print(json.dumps({
            "bench": "replay_demo", "verdict": cert.verdict, "replay_status": replay.status,
            "budget": DEFAULT_REPLAY_STEPS, "steps_replayed": steps,
            "steps_executed": replay.details.get("steps_executed"),
            "replay_seconds": round(timing.get("replay", float("nan")), 2),
            "seconds_per_replayed_step": round(timing.get("replay", 0.0) / max(steps, 1), 3),
            "replay_cpu_seconds": round(timing.get("replay_cpu", float("nan")), 2),
            "audit_seconds": round(audit_seconds, 2), "train_seconds": round(train_seconds, 2),
            "load_average": os.getloadavg()[0],
            "max_rel_deviation": replay.details.get("max_rel_deviation"),
        }))  # fmt: skip


#: jax_privacy's ImageNet configuration: N, q, T.
IMAGENET = (1_281_167, 0.012788, 71_589)


def _instrument(timings: dict[str, float]) -> None:
    """Time each check of the runner, and the parts of its one streaming pass (seconds)."""
    from audits import evidence as evidence_module
    from audits import runner as runner_module
    from dpverify.ledger import outline
    from dpverify.stats import _ledger as stats_ledger

    def wrap(owner, name, key, *, accumulate=False):
        fn = getattr(owner, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent = time.perf_counter() - t0
                timings[key] = timings.get(key, 0.0) + spent if accumulate else spent

        setattr(owner, name, timed)

    for name in ("check_integrity", "check_configuration", "check_sampling", "check_mechanics",
                 "check_privacy", "collect_evidence"):  # fmt: skip
        wrap(runner_module, name, name)
    # the pass: read + verify + decode (the rest), battery feeding, report counts
    wrap(outline, "read_outline", "read_pass_total")
    wrap(stats_ledger.SamplingStream, "add", "read_pass_battery", accumulate=True)
    wrap(evidence_module.InclusionCounts, "add", "read_pass_counts", accumulate=True)


def _timed_audit(path: Path, processes: int | None = None) -> dict:
    """``run_audit(path, replay_steps=None)`` with seconds per check (this process).

    CPU seconds and peak memory count the audit's child processes too
    (``RUSAGE_CHILDREN``: they have exited when the audit returns).
    """
    import resource

    from audits import run_audit

    timings: dict[str, float] = {}
    _instrument(timings)
    start, cpu = time.perf_counter(), time.process_time()
    cert = run_audit(path, replay_steps=None, processes=processes)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    helper_cpu = children.ru_utime + children.ru_stime
    timings["read_pass_verify_decode"] = (
        timings.get("read_pass_total", 0.0)
        - timings.get("read_pass_battery", 0.0)
        - timings.get("read_pass_counts", 0.0)
    )
    return {
        "verdict": cert.verdict,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu + helper_cpu, 3),
        "main_cpu_seconds": round(cpu, 3),
        "children_cpu_seconds": round(helper_cpu, 3),
        "processes": processes,
        "per_check": {k: round(v, 3) for k, v in timings.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children_peak_rss_mb": round(children.ru_maxrss / 1024, 1),
        "load_average": os.getloadavg()[0],
    }


def _timed_battery(path: Path) -> dict:
    """The sampling battery alone, streaming the ledger from disk (``sampling_from_ledger(path)``)."""
    import resource

    from dpverify.stats import sampling_from_ledger

    start, cpu = time.perf_counter(), time.process_time()
    result = sampling_from_ledger(path)
    return {
        "passed": bool(result.passed),
        "seconds": round(time.perf_counter() - start, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def bench_imagenet(
    fraction: float, workdir: str | None, *, audit: bool = True, processes: int | None = None
) -> None:
    """Write an ImageNet-scale Poisson ledger, then audit it in a fresh process."""
    import os
    import subprocess
    import sys

    from dpverify.accounting import epsilon_poisson
    from dpverify.ledger import LedgerWriter, RunHeader, Seal, Step
    from dpverify.samplers import PoissonSampler

    n, q, full_steps = IMAGENET
    steps = max(1, round(full_steps * fraction))
    sigma, delta = 1.0, 1e-7  # below 1/N (a delta >= 1/N is unverifiable)
    claim = 1.05 * epsilon_poisson(q, sigma, steps, delta, accountant="pld")
    header = RunHeader(
        dataset_size=n, sampler="poisson", sampling_rate=q, noise_multiplier=sigma,
        clip_norm=1.0, delta=delta, claimed_epsilon=claim, physical_batch_size=1024,
    )  # fmt: skip
    sampler = PoissonSampler(n, q, seed=1)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "ledger"
        sample_s = write_s = write_cpu = 0.0
        total = 0
        chunk = 512
        writer = LedgerWriter.create(path, header, group_commit=1024)
        for first in range(0, steps, chunk):
            t0 = time.perf_counter()
            sets = [sampler.sample(t) for t in range(first, min(first + chunk, steps))]
            records = [
                Step(step=first + j, indices=idx, noise_std=sigma, noise_draws=1,
                     num_clipped=0, max_grad_norm=0.5, max_clipped_norm=0.5,
                     denominator=q * n, physical_batches=-(-idx.size // 1024))
                for j, idx in enumerate(sets)
            ]  # fmt: skip
            sample_s += time.perf_counter() - t0
            total += sum(int(s.size) for s in sets)
            t0, c0 = time.perf_counter(), time.process_time()
            for rec in records:
                writer.append(rec)
            write_s += time.perf_counter() - t0
            write_cpu += time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        writer.close(seal=Seal(steps_executed=steps, final_step=steps))
        write_s += time.perf_counter() - t0
        write_cpu += time.process_time() - c0
        size = sum(f.stat().st_size for f in path.iterdir())
        print(json.dumps({
            "bench": "imagenet_write", "dataset_size": n, "sampling_rate": q, "steps": steps,
            "fraction": fraction, "indices": total, "mean_batch": round(total / steps, 1),
            "write_seconds": round(write_s, 2), "write_cpu_seconds": round(write_cpu, 2),
            "steps_per_second": round(steps / write_s, 1),
            "steps_per_cpu_second": round(steps / write_cpu, 1),
            "indices_per_second": round(total / write_s),
            "sampler_steps_per_second": round(steps / sample_s, 1),
            "ledger_bytes": size, "bytes_per_index": round(size / total, 4),
        }), flush=True)  # fmt: skip
        if not audit:
            return
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        out = subprocess.run(
            [sys.executable, __file__, "--audit-only", str(path),
             *(["--processes", str(processes)] if processes else [])],
            env=env, capture_output=True, text=True, check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({"bench": "imagenet_audit", "steps": steps, "indices": total,
                          **result}), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--dataset-size", type=int, default=60_000)
    parser.add_argument("--sampling-rate", type=float, default=0.004)
    parser.add_argument("--segment-steps", type=int, default=25)
    parser.add_argument("--no-replay-bench", action="store_true")
    parser.add_argument("--no-demo-bench", action="store_true")
    parser.add_argument("--no-audit-bench", action="store_true")
    parser.add_argument("--scale", choices=("default", "imagenet"), default="default")
    parser.add_argument("--fraction", type=float, default=1.0, help="imagenet: share of T")
    parser.add_argument("--workdir", help="imagenet: folder for the temporary ledger")
    parser.add_argument("--write-only", action="store_true", help="imagenet: skip the audit")
    parser.add_argument("--audit-only", metavar="LEDGER", help=argparse.SUPPRESS)
    parser.add_argument("--battery-only", metavar="LEDGER", help="the battery alone on LEDGER")
    parser.add_argument(
        "--processes", type=int, help="imagenet: processes of the audit's pass (default: auto)"
    )
    args = parser.parse_args()
    if args.battery_only:
        print(json.dumps(_timed_battery(Path(args.battery_only))))
        return
    if args.audit_only:
        print(json.dumps(_timed_audit(Path(args.audit_only), args.processes)))
        return
    if args.scale == "imagenet":
        bench_imagenet(
            args.fraction, args.workdir, audit=not args.write_only, processes=args.processes
        )
        return
    if not args.no_audit_bench:
        bench_audit(args.dataset_size, args.sampling_rate, args.steps)
    if not args.no_replay_bench:
        bench_replay(args.segment_steps)
    if not args.no_demo_bench:
        bench_demo()


if __name__ == "__main__":
    main()
