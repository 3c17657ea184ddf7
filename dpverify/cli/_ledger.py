"""``dpverify ledger verify|show|import|export``: inspect and convert ledgers.

Exit codes: 0 intact / done, 1 integrity failure (corrupt ledger), 2 unusable
input (missing path, not a ledger, malformed JSON Lines, bad argument).
Sampled indices are printed only by ``show --indices``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ledger`` command family to the dpverify parser."""
    ledger = subparsers.add_parser(
        "ledger",
        help="verify, show, import and export run ledgers",
        description=__doc__.replace("``", ""),  # plain text in --help
    )
    sub = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND")
    ledger.set_defaults(handler=lambda args: _usage(ledger))

    p = sub.add_parser("verify", help="check a ledger's integrity (exit 0 intact, 1 corrupt)")
    p.add_argument("path", help="ledger directory or run directory")
    p.add_argument(
        "--heads",
        metavar="FILE",
        help="cross-check this copy of the heads file (exported chain heads) "
        "instead of LEDGER/heads",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("show", help="print the run header and a summary")
    p.add_argument("path", help="ledger directory or run directory")
    p.add_argument(
        "--indices", action="store_true", help="also print every step's sampled indices (private!)"
    )
    p.add_argument("--json", action="store_true", help="print header and summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_show)

    p = sub.add_parser("import", help="create RUN_DIR/ledger from a JSON Lines file")
    p.add_argument("file", help="JSON Lines file (first line: the run)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create")
    seal = p.add_mutually_exclusive_group()
    seal.add_argument(
        "--seal",
        action="store_true",
        help="the file is the whole run: seal the ledger at its end if it has no seal line "
        "(default: a file without a seal line may be cut short and stays unsealed)",
    )
    seal.add_argument(
        "--no-seal", action="store_true", help=argparse.SUPPRESS
    )  # the old default's opt-out, now the default
    p.set_defaults(handler=_import)

    p = sub.add_parser("export", help="write a ledger as JSON Lines (holds indices: private)")
    p.add_argument("path", help="ledger directory or run directory")
    p.add_argument("--out", required=True, metavar="FILE", help="JSON Lines file to write")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(handler=_export)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    sys.stderr.write("dpverify ledger: error: a subcommand is required\n")
    return 2


def _progress(scan: Any, quiet: bool) -> Iterator[Any]:
    """Iterate ``scan`` with a byte-based tqdm bar on stderr when interactive."""
    if quiet or not sys.stderr.isatty():
        yield from scan
        return
    from tqdm import tqdm

    total = (scan.path / "records.log").stat().st_size
    with tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, leave=False) as bar:
        done = 0
        for i, record in enumerate(scan):
            if i % 1024 == 0:
                bar.update(scan.end_offset - done)
                done = scan.end_offset
            yield record
        bar.update(scan.end_offset - done)


def _verify(args: argparse.Namespace) -> int:
    from dpverify.ledger.reader import LedgerScan
    from dpverify.ledger.verify import verify_scan

    scan = LedgerScan(args.path, heads=args.heads)
    report = verify_scan(scan, _progress(scan, args.quiet))
    if args.json:
        print(json.dumps({"path": str(scan.path), **report.to_dict()}, indent=2))
    elif report.ok:
        sealed = "sealed" if report.sealed else "NOT sealed (run incomplete or still running)"
        print(f"intact: {report.records} records, {report.steps} steps, {sealed}")
        print(f"head: {report.head}")
        if report.heads_checked:
            print(f"exported heads: {report.heads_checked} matched")
        else:
            print("exported heads: none to check (no heads file)")
    else:
        print(f"CORRUPT at record {report.first_bad_record}: {report.reason}")
        print(f"intact prefix: {report.records} records, head {report.head}")
    if report.torn_tail_bytes:
        sys.stderr.write(
            f"dpverify: warning: torn tail of {report.torn_tail_bytes} bytes ignored "
            "(the writer died mid-record; the complete prefix is intact)\n"
        )
    return 0 if report.ok else 1


def _show(args: argparse.Namespace) -> int:
    from dpverify.errors import InvalidArgument
    from dpverify.ledger._payload import record_to_dict
    from dpverify.ledger.reader import LedgerScan
    from dpverify.ledger.records import Checkpoint, Resume, RunHeader, Seal, Step

    if args.indices and args.json:
        raise InvalidArgument("--indices cannot be combined with --json (use ledger export)")
    scan = LedgerScan(args.path)
    header: RunHeader | None = None
    sizes_sum = sizes_n = 0
    sizes_min: int | None = None
    sizes_max: int | None = None
    resumes: list[int] = []
    checkpoints = 0
    seal: Seal | None = None
    for record in _progress(scan, args.quiet):
        if isinstance(record, Step):
            b = record.batch_size
            sizes_sum += b
            sizes_n += 1
            sizes_min = b if sizes_min is None else min(sizes_min, b)
            sizes_max = b if sizes_max is None else max(sizes_max, b)
            if args.indices:
                print(f"step {record.step}: {' '.join(map(str, record.indices.tolist()))}")
        elif isinstance(record, RunHeader):
            header = record
            if not args.json:
                _print_header(record, scan.path)
        elif isinstance(record, Resume):
            resumes.append(record.step)
        elif isinstance(record, Checkpoint):
            checkpoints += 1
        elif isinstance(record, Seal):
            seal = record
    summary = {
        "steps_executed": sizes_n,
        "next_step": scan.state.next_step,
        "batch_size_mean": sizes_sum / sizes_n if sizes_n else None,
        "batch_size_min": sizes_min,
        "batch_size_max": sizes_max,
        "resumes": resumes,
        "checkpoints": checkpoints,
        "sealed": seal is not None,
        "head": scan.head,
        "torn_tail_bytes": scan.torn_tail_bytes,
    }
    if args.json:
        assert header is not None
        print(json.dumps({"path": str(scan.path), "header": record_to_dict(header),
                          "summary": summary}, indent=2))  # fmt: skip
        return 0
    mean = f"{summary['batch_size_mean']:.2f}" if sizes_n else "-"
    print(f"steps:       {sizes_n} executed (next logical step {scan.state.next_step})")
    print(f"batch size:  mean {mean}, min {sizes_min}, max {sizes_max}")
    print(f"resumes:     {len(resumes)}" + (f" (at steps {resumes})" if resumes else ""))
    print(f"checkpoints: {checkpoints}")
    print(f"sealed:      {'yes' if seal else 'no'}")
    print(f"head:        {scan.head}")
    if scan.torn_tail_bytes:
        print(f"torn tail:   {scan.torn_tail_bytes} bytes ignored")
    return 0


def _print_header(header: Any, path: Path) -> None:
    from dpverify.ledger._payload import record_to_dict

    print(f"ledger:      {path}")
    for name, value in record_to_dict(header).items():
        if value is None or value == {}:
            continue
        print(f"  {name}: {json.dumps(value) if isinstance(value, dict) else value}")


def _import(args: argparse.Namespace) -> int:
    from dpverify.ledger.jsonl import import_jsonl
    from dpverify.ledger.verify import verify_ledger

    target = import_jsonl(args.file, args.out, seal=args.seal)
    report = verify_ledger(target)
    print(f"imported {report.steps} steps into {target}")
    if not report.sealed:
        print("not sealed: the file has no seal line (pass --seal if it is the whole run)")
    print(f"head: {report.head}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from dpverify.errors import InvalidArgument
    from dpverify.ledger.jsonl import export_jsonl

    if args.out == "-":  # would silently create a file named '-'
        raise InvalidArgument(
            "--out - is not supported: the export holds sampled indices; name a file (mode 0600)"
        )
    if not args.force and os.path.lexists(args.out):  # name the flag this command has
        raise InvalidArgument(f"{args.out}: already exists; pass --force to replace it")
    lines = export_jsonl(args.path, args.out, overwrite=args.force)
    print(f"wrote {lines} lines to {args.out} (contains sampled indices: keep it private)")
    return 0
