"""Accounting benchmark: time per accountant, and dpverify's overhead over the libraries.

For each case and accountant, the same computation is timed twice, side by
side: through :func:`dpverify.accounting.compute_epsilon` ("ours") and by
calling dp-accounting / prv-accountant directly on the equivalent event
("library").  One JSON object per line on stdout::

    {"case": ..., "accountant": ..., "steps": ..., "groups": ..., "ours_s": ...,
     "library_s": ..., "ours_wall_s": ..., "library_wall_s": ...,
     "overhead": ours_s/library_s - 1, "epsilon_ours": ..., "epsilon_library": ...}

Times ``*_s`` are CPU seconds of this process (best of 3 for RDP, 1 run
otherwise); ``*_wall_s`` are wall seconds.

Cases: 10⁴ and 10⁵ homogeneous steps; 1 000 heterogeneous segments cycling
over 10 (q, σ) settings (a schedule with restarts); 1 000 segments with 1 000
distinct (q, σ) (pessimistically rounded to ≤ 32 groups by dpverify; the
library is timed on the same rounded groups).  dpverify's PRV uses the
library's components on an FFT-friendly grid, so its "overhead" is negative.

With ``--accuracy`` it prints instead, for the two stored 1 000-step
heterogeneous schedules (``tests/accounting/heterogeneous_reference.json``:
exact per-step dp-accounting PLD), what ``compute_epsilon`` reports at a given
``--max-groups`` (bracket, estimates, time) against the exact value, and the
tiny-q case q = 1e-7, T = 1e6, δ = 1e-12 (PLD far above valid upper bounds)::

    {"case": ..., "max_groups": ..., "exact": ..., "upper": ..., "lower": ...,
     "estimate_range": [...], "rdp": ..., "pld": ..., "prv_upper": ...,
     "disagreements": [...], "wall_s": ...}

With ``--heterogeneous`` it times PLD on σ linear 1.5 → 0.8 at q = 0.01 over
T = 1 000 and 10 000 distinct (q, σ) pairs (``--steps`` to choose), at the
default ``max_groups`` (1 000: T = 1 000 is composed pair by pair, T = 10⁴ is
rounded into 1 000 dominating groups), and the rounding's width: the same PLD
on the groups the run dominates (q down, σ up)::

    {"case": "sigma_decay", "steps": ..., "groups": ..., "pairs_exact": ...,
     "pld": ..., "pld_dominated": ..., "rounding_width": (pld - dominated) / pld,
     "cpu_s": ..., "wall_s": ..., "exact": ... (stored reference, T = 1 000 only)}

Usage::

    python benchmarks/accounting.py            # full sizes (several minutes)
    python benchmarks/accounting.py --heterogeneous --steps 1000 10000 --groups 1000 500
    python benchmarks/accounting.py --quick    # smoke test (seconds)
    python benchmarks/accounting.py --accuracy     # minutes (all three accountants)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings

DELTA = 1e-5


def _cases(quick: bool):
    from dpverify.accounting import Segment

    scale = 100 if quick else 1
    yield (
        "homogeneous_1e4",
        [Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10_000 // scale)],
    )
    yield (
        "homogeneous_1e5",
        [Segment(sampling_rate=0.004, noise_multiplier=1.1, steps=100_000 // scale)],
    )
    n = 1000 // (10 if quick else 1)
    cycle = [(0.01 * (1 + k % 3), 1.0 + 0.1 * k) for k in range(10)]
    yield (
        "heterogeneous_1000_segments",
        [
            Segment(sampling_rate=cycle[i % 10][0], noise_multiplier=cycle[i % 10][1], steps=10)
            for i in range(n)
        ],
    )
    yield (
        "heterogeneous_1000_distinct",
        [Segment(sampling_rate=0.01, noise_multiplier=1.0 + 0.001 * i, steps=10) for i in range(n)],
    )


def _library(name: str, groups, delta: float) -> float:
    """The libraries called directly on the grouped event (what a careful user writes)."""
    import dp_accounting as dpa

    if name == "prv":
        import prv_accountant

        prvs = [
            prv_accountant.PoissonSubsampledGaussianMechanism(
                sampling_probability=q, noise_multiplier=s
            )
            for (q, s), _ in groups
        ]
        counts = [c for _, c in groups]
        acc = prv_accountant.PRVAccountant(
            prvs=prvs, eps_error=0.01, delta_error=delta / 1000, max_self_compositions=counts
        )
        return float(acc.compute_epsilon(delta, counts)[2])
    parts = [
        dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(s)), c)
        for (q, s), c in groups
    ]
    event = parts[0] if len(parts) == 1 else dpa.ComposedDpEvent(parts)
    if name == "rdp":
        acc = dpa.rdp.RdpAccountant()
    else:
        acc = dpa.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def _time(fn, repeat: int):
    """Best of ``repeat`` runs: (CPU seconds, wall seconds, value).

    CPU time of this process is the figure compared: the machine may be shared,
    and wall time then measures the neighbours too.
    """
    best_cpu = best_wall = math.inf
    value = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        value = fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument(
        "--accountants", default="rdp,pld,prv", help="comma-separated subset of rdp,pld,prv"
    )
    parser.add_argument("--accuracy", action="store_true", help="bracket vs exact (see above)")
    parser.add_argument(
        "--max-groups", type=int, default=None, help="with --accuracy (default: the library's)"
    )
    parser.add_argument("--heterogeneous", action="store_true", help="PLD time on σ decay")
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument(
        "--groups", type=int, nargs="+", default=[1000], help="with --heterogeneous: max_groups"
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.accuracy:
        return _accuracy(args.max_groups)
    if args.heterogeneous:
        return _heterogeneous(args.steps, args.groups)

    from dpverify.accounting import compute_epsilon
    from dpverify.accounting.accountants import group_segments, pessimistic_groups

    _library("rdp", [((0.01, 1.0), 1)], DELTA)  # warm imports
    for case, segments in _cases(args.quick):
        steps = sum(s.steps for s in segments)
        groups, _ = pessimistic_groups(group_segments(segments), 32)
        for name in args.accountants.split(","):
            repeat = 3 if name == "rdp" or args.quick else 1

            def ours(name=name, segments=segments):
                return getattr(compute_epsilon(segments, DELTA, accountants=(name,)), name).epsilon

            def lib(name=name, groups=groups):
                return _library(name, groups, DELTA)

            lib_s, lib_wall, lib_eps = _time(lib, repeat)
            ours_s, ours_wall, ours_eps = _time(ours, repeat)
            row = {
                "case": case,
                "accountant": name,
                "steps": steps,
                "segments": len(segments),
                "groups": len(groups),
                "ours_s": round(ours_s, 4),
                "library_s": round(lib_s, 4),
                "ours_wall_s": round(ours_wall, 4),
                "library_wall_s": round(lib_wall, 4),
                "overhead": round(ours_s / lib_s - 1.0, 4),
                "epsilon_ours": ours_eps,
                "epsilon_library": lib_eps,
            }
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
    return 0


def _accuracy(max_groups: int | None) -> int:
    from pathlib import Path

    from dpverify.accounting import Segment, compute_epsilon
    from dpverify.accounting.accountants import DEFAULT_MAX_GROUPS

    if max_groups is None:
        max_groups = DEFAULT_MAX_GROUPS
    here = Path(__file__).resolve().parents[1] / "tests" / "accounting"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from heterogeneous_reference import schedules

    ref = json.loads((here / "heterogeneous_reference.json").read_text())["cases"]
    cases = [
        (name, [Segment(sampling_rate=q, noise_multiplier=s, steps=1) for q, s in sched], DELTA)
        for name, sched in schedules().items()
    ]
    cases.append(("tiny_q_1e-7_T_1e6", [Segment(sampling_rate=1e-7, noise_multiplier=1.0,
                                               steps=10**6)], 1e-12))  # fmt: skip
    for name, segments, delta in cases:
        wall, cpu = time.perf_counter(), time.process_time()
        r = compute_epsilon(segments, delta, max_groups=max_groups)
        cpu = time.process_time() - cpu
        row = {
            "case": name,
            "max_groups": max_groups,
            "delta": delta,
            "exact": ref.get(name, {}).get("pld_epsilon"),
            "upper": r.upper,
            "lower": r.lower,
            "tight": r.tight,
            "estimate_range": r.prv.details.get("estimate_range"),
            "rdp": r.rdp.epsilon,
            "pld": r.pld.epsilon,
            "prv_upper": r.prv.epsilon,
            "disagreements": list(r.disagreements),
            "seconds": {a.name: round(a.seconds, 1) for a in r.results()},
            "cpu_s": round(cpu, 1),
            "wall_s": round(time.perf_counter() - wall, 1),
        }
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 0


def _heterogeneous(steps_list: list[int], groups_list: list[int]) -> int:
    from pathlib import Path

    from dpverify.accounting import Segment, compute_epsilon
    from dpverify.accounting._engines import pld_epsilon_groups
    from dpverify.accounting.grouping import bracket_groups, group_segments

    ref_path = Path(__file__).resolve().parents[1] / "tests/accounting/heterogeneous_reference.json"
    ref = json.loads(ref_path.read_text())["cases"]["sigma_decay_1.5_to_0.8"]["pld_epsilon"]
    for steps in steps_list:
        segs = [
            Segment(sampling_rate=0.01, noise_multiplier=1.5 - 0.7 * t / (steps - 1), steps=1)
            for t in range(steps)
        ]
        for max_groups in groups_list:
            if max_groups >= steps and max_groups != groups_list[0]:
                continue  # exact either way
            cpu, wall = time.process_time(), time.perf_counter()
            report = compute_epsilon(segs, DELTA, accountants=("pld",), max_groups=max_groups)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            pld = report.pld
            _, dominated = bracket_groups(group_segments(segs), max_groups)
            low = pld_epsilon_groups(
                dominated, DELTA, "add_remove", pld.details["value_discretization_interval"]
            )[0]
            row = {
                "case": "sigma_decay",
                "steps": steps,
                "max_groups": max_groups,
                "groups": pld.details.get("groups"),
                "pairs_exact": pld.details.get("pairs_exact"),
                "pld": pld.epsilon,
                "pld_dominated": low,
                "rounding_width": round((pld.epsilon - low) / pld.epsilon, 6),
                "cpu_s": round(cpu, 1),
                "wall_s": round(wall, 1),
                "exact": ref if steps == 1000 else None,
            }
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
