"""``dpverify epsilon`` and ``dpverify noise``: privacy accounting on the command line.

* ``dpverify epsilon --sampling-rate Q --noise-multiplier S --steps T --delta D
  [--accountant rdp|pld|prv|all] [--neighbouring add_remove|replace_one] [--json]``
* ``dpverify epsilon RUN_DIR [--delta D] [--accountant ...] [--json]`` — from a ledger
  (every executed step, repeats after resumes included).
* ``dpverify noise --sampling-rate Q --steps T --delta D --target-epsilon E
  [--accountant pld|rdp|prv] [--json]``

With ``--json`` the output of ``epsilon`` is one object with keys ``rdp``,
``pld``, ``prv`` (``prv`` with ``lower``, ``estimate``, ``upper``) and
``reasons`` (why an accountant is ``null``).

PLD and PRV can take a minute or more (many steps, large σ): before such a
computation a hint to ``--accountant rdp`` goes to stderr, and on a terminal
each accountant (and each calibration step of ``noise``) is announced as it
runs, so the command is never silent for long.
"""

from __future__ import annotations

import argparse
import math
import sys

from dpverify.cli._common import integer, positive_float, print_json
from dpverify.errors import InvalidArgument


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``epsilon`` and ``noise`` to the dpverify parser."""
    p = subparsers.add_parser(
        "epsilon",
        help="ε of a run (from RUN_DIR's ledger) or of parameters, with RDP, PLD and PRV",
        description="ε(δ) with RDP, PLD and PRV side by side, from a run's ledger or "
        "from parameters (Poisson-subsampled Gaussian).",
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run or ledger directory")
    p.add_argument("--sampling-rate", type=positive_float, metavar="Q", help="q in (0, 1]")
    p.add_argument("--noise-multiplier", type=positive_float, metavar="S", help="σ > 0")
    p.add_argument("--steps", type=integer, metavar="T", help="number of steps >= 1")
    p.add_argument(
        "--epochs", type=positive_float, metavar="E", help="instead of --steps: ceil(E / q) steps"
    )
    p.add_argument("--delta", type=positive_float, metavar="D", help="δ in (0, 1)")
    p.add_argument(
        "--accountant", choices=("rdp", "pld", "prv", "all"), default="all", help="default: all"
    )
    p.add_argument(
        "--neighbouring",
        choices=("add_remove", "replace_one"),
        default=None,
        help="neighbouring relation (default: the run's, else add_remove)",
    )
    p.add_argument(
        "--max-groups",
        type=integer,
        default=None,
        metavar="K",
        help="PLD composes up to K distinct (q, σ) pairs of a run one by one; beyond, it "
        "rounds them into K groups (default 1000; ~10–40 ms per pair). RDP and PRV use at "
        "most 32 groups",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(handler=_epsilon)

    n = subparsers.add_parser(
        "noise",
        help="the noise multiplier σ that reaches a target ε",
        description="Calibrate σ for a target ε at given q, steps and δ (Poisson, add/remove).",
    )
    n.add_argument(
        "--sampling-rate", type=positive_float, required=True, metavar="Q", help="q in (0, 1]"
    )
    n.add_argument("--steps", type=integer, metavar="T", help="number of steps >= 1")
    n.add_argument(
        "--epochs", type=positive_float, metavar="E", help="instead of --steps: ceil(E / q) steps"
    )
    n.add_argument("--delta", type=positive_float, required=True, metavar="D", help="δ in (0, 1)")
    n.add_argument(
        "--target-epsilon", type=positive_float, required=True, metavar="EPS", help="target ε > 0"
    )
    n.add_argument(
        "--accountant", choices=("pld", "rdp", "prv"), default="pld", help="default: pld"
    )
    n.add_argument("--json", action="store_true", help="one JSON object on stdout")
    n.set_defaults(handler=_noise)


def _steps(args: argparse.Namespace) -> int | None:
    from dpverify._validate import check_int, check_positive, check_probability

    if args.steps is not None and args.epochs is not None:
        raise InvalidArgument("give --steps or --epochs, not both")
    if args.epochs is not None:
        q = check_probability("sampling_rate", args.sampling_rate)
        epochs = check_positive("epochs", args.epochs)
        return check_int("steps", math.ceil(epochs / q - 1e-9), minimum=1)
    if args.steps is None:
        return None
    return check_int("steps", args.steps, minimum=1)


#: Above this many steps (or σ at or above SLOW_SIGMA) PLD/PRV may take a minute or more.
SLOW_STEPS = 1_000_000
SLOW_SIGMA = 20.0


def _hint_if_slow(accountant: str, steps: int, sigma: float | None = None) -> None:
    """One stderr line before a PLD/PRV computation that may take long."""
    if accountant == "rdp" or (steps < SLOW_STEPS and (sigma is None or sigma < SLOW_SIGMA)):
        return
    what = f"{steps} steps" + (f" at σ = {sigma:g}" if sigma is not None else "")
    sys.stderr.write(
        f"note: PLD/PRV over {what} can take a minute or more; "
        "--accountant rdp answers in about a second (a valid upper bound, a few % looser)\n"
    )
    sys.stderr.flush()


def _progress(message: str) -> None:
    """Announce progress on stderr when it is a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{message}")
        sys.stderr.flush()


def _progress_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _epsilon(args: argparse.Namespace) -> int:
    from dpverify import accounting
    from dpverify._validate import check_int

    if args.max_groups is not None:  # validated for both forms, as `audit` does
        check_int("max_groups", args.max_groups, minimum=1)

    if args.run_dir is not None:
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("sampling_rate", "noise_multiplier", "steps", "epochs")
            if getattr(args, name) is not None
        ]
        if given:
            raise InvalidArgument(
                f"{given[0]} cannot be combined with RUN_DIR (ε comes from the ledger)"
            )
        kwargs = {"accountants": args.accountant}
        if args.max_groups is not None:
            kwargs["max_groups"] = args.max_groups
        if args.neighbouring is not None:
            kwargs["neighbouring"] = args.neighbouring
        report = accounting.epsilon_from_ledger(
            args.run_dir, args.delta, progress=_announce, **kwargs
        )
    else:
        from dpverify._validate import check_positive, check_probability

        missing = [
            flag
            for flag, value in (
                ("--sampling-rate", args.sampling_rate),
                ("--noise-multiplier", args.noise_multiplier),
                ("--steps", args.steps if args.epochs is None else args.epochs),
                ("--delta", args.delta),
            )
            if value is None
        ]
        if missing:
            raise InvalidArgument(
                f"give RUN_DIR, or {missing[0]} (needs --sampling-rate, "
                "--noise-multiplier, --steps, --delta)"
            )
        q = check_probability("sampling_rate", args.sampling_rate)
        sigma = check_positive("noise_multiplier", args.noise_multiplier)
        delta = check_probability("delta", args.delta, allow_one=False)
        steps = _steps(args)
        assert steps is not None  # checked with the other required flags above
        _hint_if_slow(args.accountant, steps, sigma)
        report = accounting.compute_epsilon(
            accounting.Segment(sampling_rate=q, noise_multiplier=sigma, steps=steps),
            delta,
            accountants=args.accountant,
            neighbouring=args.neighbouring or "add_remove",
            progress=_announce,
        )
    _progress_done()
    if args.json:
        print_json(report.to_json())
    else:
        _print_report(report)
    return 0


def _announce(name: str) -> None:
    _progress(f"computing ε with {name.upper()}…")


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.6g}"


def _print_report(report) -> None:  # EpsilonReport
    out = sys.stdout
    out.write(
        f"ε at δ = {report.delta:g} over {report.steps} executed steps "
        f"(sampler {report.sampler}, {report.neighbouring}):\n"
    )
    shown = [r for r in report.results() if r.reason != "not requested"]
    reasons = {r.reason for r in shown}
    if shown and all(r.epsilon is None for r in shown) and len(reasons) == 1:
        out.write(f"  no accountant answered: {reasons.pop()}\n")
        shown = []
    for res in shown:
        if res.name == "prv" and res.epsilon is not None and "upper" in res.details:
            d = res.details
            value = f"{_fmt(d['upper'])} (lower {_fmt(d['lower'])}, estimate {_fmt(d['estimate'])})"
        else:
            value = _fmt(res.epsilon)
        label = {"rdp": "RDP", "pld": "PLD", "prv": "PRV upper"}[res.name]
        line = f"  {label:<10} {value}"
        if res.reason:
            line += f"  [{res.reason}]"
        out.write(line + "\n")
    for note in report.notes[1:] if report.notes else ():
        out.write(f"  note: {note}\n")
    if report.rounding:
        out.write(f"  note: {report.rounding} (--max-groups to compose more pairs exactly)\n")
    for note in report.disagreements:
        out.write(f"  note: {note}\n")


def _noise(args: argparse.Namespace) -> int:
    from dpverify import accounting
    from dpverify._validate import check_positive, check_probability

    q = check_probability("sampling_rate", args.sampling_rate)
    delta = check_probability("delta", args.delta, allow_one=False)
    target = check_positive("target_epsilon", args.target_epsilon)
    steps = _steps(args)
    if steps is None:
        raise InvalidArgument("give --steps or --epochs")
    _hint_if_slow(args.accountant, steps)

    def tried(sigma: float, eps: float) -> None:
        _progress(f"calibrating σ ({args.accountant.upper()}): σ = {sigma:.5g} gives ε = {eps:.5g}")

    sigma = accounting.calibrate_noise_multiplier(
        q, steps, delta, target, args.accountant, progress=tried
    )
    _progress_done()
    eps = accounting.epsilon_poisson(q, sigma, steps, delta, args.accountant)
    if args.json:
        print_json(
            {
                "noise_multiplier": sigma,
                "epsilon": eps,
                "target_epsilon": target,
                "sampling_rate": q,
                "steps": steps,
                "delta": delta,
                "accountant": args.accountant,
            }
        )
    else:
        sys.stdout.write(
            f"noise multiplier σ = {sigma:.6g} gives ε = {eps:.6g} ≤ {target:g} at δ = {delta:g} "
            f"after {steps} steps of rate {q:g} ({args.accountant.upper()})\n"
        )
    return 0
