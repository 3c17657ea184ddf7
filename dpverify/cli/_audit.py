"""``dpverify audit``: audit a run and issue its certificate.

Exit codes: 0 certified; 1 refuted, or unverifiable (a corrupt or
inconsistent ledger, or no claim to certify — the certificate says which),
or certified without a part named by ``--require`` being verified;
2 unusable input (a missing path, a path that is not a ledger or run
directory, a bad option).
"""

from __future__ import annotations

import argparse
import sys

from dpverify.cli._common import integer, positive_float, print_json

# Kept in step with audits.replay.DEFAULT_REPLAY_STEPS and audits.certificate.SCOPE_PARTS
# (tests/cli pins both), so that --help does not import the auditor.
_DEFAULT_REPLAY_STEPS = 50
_SCOPE_PARTS = ("integrity", "sampling", "accounting", "mechanics", "replay", "empirical")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dpverify audit`` to the dpverify parser."""
    p = subparsers.add_parser(
        "audit",
        help="audit a run's ledger and issue a certificate",
        description=(
            "Audit a run: ledger integrity, declared configuration, Poisson sampling tests, "
            "clip/noise mechanics, ε recomputed with RDP/PLD/PRV, and replay of steps through "
            "the reference trainer. Exit 0 certified, 1 refuted or unverifiable, 2 unusable input."
        ),
    )
    p.add_argument("path", metavar="RUN_DIR_OR_LEDGER", help="run directory or ledger directory")
    p.add_argument("--json", metavar="FILE", help="write the certificate as JSON ('-' for stdout)")
    p.add_argument("--report", metavar="FILE", help="write a human report (.html or .md)")
    replay = p.add_mutually_exclusive_group()
    replay.add_argument(
        "--replay-steps",
        metavar="K",
        type=integer,
        default=_DEFAULT_REPLAY_STEPS,
        help=(
            "replay budget in steps: whole checkpoint segments chosen at random, plus always "
            "the final segment and every segment touching a resume "
            f"(default {_DEFAULT_REPLAY_STEPS}; 0 = no replay, like --no-replay)"
        ),
    )
    replay.add_argument("--no-replay", action="store_true", help="skip the replay check")
    p.add_argument(
        "--alpha",
        metavar="A",
        type=positive_float,
        default=1e-3,
        help="family-wise false-positive rate of the sampling tests (default 1e-3)",
    )
    p.add_argument("--noise-key", metavar="FILE", help="noise key file (default RUN_DIR/noise.key)")
    p.add_argument(
        "--seed",
        metavar="S",
        type=integer,
        default=0,
        help="seed of the sampling battery's Monte-Carlo tests (default 0)",
    )
    p.add_argument(
        "--replay-seed",
        metavar="S",
        type=integer,
        help="seed of the random choice of replayed segments (default: fresh; printed)",
    )
    p.add_argument(
        "--require",
        metavar="PART",
        action="append",
        default=[],
        choices=_SCOPE_PARTS,
        help=(
            "exit 1 unless PART of the certificate's scope was verified "
            f"(repeatable; one of {', '.join(_SCOPE_PARTS)})"
        ),
    )
    p.add_argument(
        "--empirical-confidence",
        metavar="C",
        type=positive_float,
        default=0.95,
        help="confidence of the canaries' empirical ε lower bound (default 0.95)",
    )
    p.add_argument(
        "--canary-scores",
        metavar="FILE",
        help="canary scores JSON {'scores': [...], 'included': [...]} for runs that carry "
        "their own (default: computed from RUN_DIR's checkpoints and canary key)",
    )
    p.add_argument(
        "--max-groups",
        type=integer,
        default=None,
        metavar="K",
        help="PLD composes up to K distinct (q, σ) pairs of a heterogeneous schedule one by "
        "one; beyond, it rounds them into K groups (default 1000; ~10–40 ms per pair)",
    )
    p.add_argument(
        "--processes",
        type=integer,
        default=None,
        metavar="P",
        help="1 keeps the whole audit in one process; otherwise large ledgers get their privacy "
        "accounting started at once in a second process, and 2 (the default without numba) "
        "also lets a helper process share the sampling battery's per-example work (the "
        "certificate is the same)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(handler=_audit)


def _audit(args: argparse.Namespace) -> int:
    import audits

    _check_outputs(args)
    cert = audits.run_audit(
        args.path,
        alpha=args.alpha,
        replay_steps=None if args.no_replay or args.replay_steps == 0 else args.replay_steps,
        noise_key_path=args.noise_key,
        progress=not args.quiet and sys.stderr.isatty(),
        seed=args.seed,
        replay_seed=args.replay_seed,
        empirical_confidence=args.empirical_confidence,
        canary_scores_path=args.canary_scores,
        max_groups=args.max_groups,
        processes=args.processes,
    )
    written = []
    if args.json == "-":
        print_json(cert.to_json())
    elif args.json:
        audits.write_json(cert, args.json)
        written.append(f"certificate: {args.json}")
    if args.report:
        audits.write_report(cert, args.report)
        written.append(f"report:      {args.report}")
    if not args.quiet and args.json != "-":
        sys.stdout.write(cert.summary_text() + "\n")
    if not args.quiet and written:  # where the files went (stderr when stdout is the JSON)
        out = sys.stderr if args.json == "-" else sys.stdout
        out.write("".join(line + "\n" for line in written))
    missing = [part for part in args.require if not cert.verified(part)]
    for part in missing:
        reason = cert.scope.get(part, {}).get("reason", "not checked")
        sys.stderr.write(f"dpverify audit: --require {part}: NOT verified ({reason})\n")
    return cert.exit_code or (1 if missing else 0)


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse unwritable output paths before spending time on the audit."""
    from pathlib import Path

    from dpverify.errors import InvalidArgument, UnusableInput

    if not args.no_replay and args.replay_steps < 0:
        raise InvalidArgument(
            f"--replay-steps={args.replay_steps} must be >= 0 (0 skips replay, like --no-replay)"
        )
    if not 0 < args.empirical_confidence < 1:
        raise InvalidArgument(
            f"--empirical-confidence={args.empirical_confidence!r} must be in (0, 1)"
        )
    if args.canary_scores is not None and not Path(args.canary_scores).is_file():
        raise UnusableInput(f"canary scores file {args.canary_scores}: no such file")
    if args.report and Path(args.report).suffix.lower() not in (".html", ".htm", ".md"):
        raise InvalidArgument(f"--report={args.report!r} must end in .html or .md")
    for out in (args.json if args.json != "-" else None, args.report):
        if out and Path(out).is_dir():
            raise UnusableInput(f"cannot write {out}: it is a directory")
        if out and not Path(out).parent.is_dir():
            raise UnusableInput(f"cannot write {out}: directory {Path(out).parent} does not exist")
    if args.noise_key is not None:
        _check_noise_key(Path(args.noise_key), args.path)


def _check_noise_key(key_path, run_path) -> None:
    """A key file the user names explicitly must exist and match the run's digest.

    (Without ``--noise-key`` a missing or mismatched ``RUN_DIR/noise.key`` only
    skips replay, with the reason; a key the user asked for is an input error.)
    """
    import hashlib

    from dpverify.errors import UnusableInput
    from dpverify.ledger import iter_records, resolve_ledger_path

    if key_path.is_dir():
        raise UnusableInput(f"noise key file {key_path} is a directory")
    if not key_path.is_file():
        raise UnusableInput(f"noise key file {key_path}: no such file")
    try:
        header = next(iter_records(resolve_ledger_path(run_path)))  # the header only
        expected = getattr(header, "noise_key_digest", None)
    except Exception:  # an unreadable ledger is the audit's to report
        return
    if expected is None:
        return
    actual = hashlib.sha256(key_path.read_bytes()).hexdigest()
    if actual != expected:
        raise UnusableInput(
            f"noise key file {key_path} does not match the run (its SHA-256 differs from the "
            "ledger header's noise_key_digest)"
        )
