"""The accounting inputs of a ledger from its step fields alone, and ε from them.

The child process of :mod:`audits._early_privacy` runs :func:`main`: it reads
the records file's frames (checksums and hash chain verified by the ledger's
frame scanner), parses each step's scalar fields without decoding its index
block, builds the segments from the recorded rates and σ as the privacy
check does, runs :func:`dpverify.accounting.compute_epsilon` at the header's
δ and writes ``pickle((segments, delta, options, report))`` to stdout.  It
imports ``dpverify`` only (not the auditor), so it starts in about half a
second.
"""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _inputs(ledger_path: Path, max_groups: int | None) -> tuple[list, float, dict]:
    """Segments (recorded rates and σ), the header's δ and the accounting options."""
    from dpverify import accounting
    from dpverify.ledger._files import RECORDS_NAME
    from dpverify.ledger._framing import FrameScanner
    from dpverify.ledger._payload import TYPE_CODES, decode_payload, step_fields_and_block
    from dpverify.ledger.records import RunHeader, Step

    step_code = TYPE_CODES[Step]
    header: Any = None
    steps = []
    for frame in FrameScanner(ledger_path / RECORDS_NAME):
        if frame.code == step_code:
            fields, _ = step_fields_and_block(frame.payload)
            steps.append(
                types.SimpleNamespace(
                    step=fields["step"],
                    sampling_rate=fields.get("sampling_rate"),
                    noise_multiplier=fields.get("noise_multiplier"),
                )
            )
        elif header is None:
            header = decode_payload(frame.code, frame.payload)
    if not isinstance(header, RunHeader):
        raise ValueError("no run header")
    segments = accounting.segments_from_ledger(types.SimpleNamespace(header=header, steps=steps))
    options = accounting.accounting_kwargs(header)
    if max_groups is not None:
        options["max_groups"] = max_groups
    return segments, float(header.delta), options


def main(argv: list[str]) -> int:  # pragma: no cover - runs in the child process
    from dpverify import accounting

    path = Path(argv[0])
    max_groups = int(argv[1]) if len(argv) > 1 else None
    segments, delta, options = _inputs(path, max_groups)
    report = accounting.compute_epsilon(segments, delta, **options)
    sys.stdout.buffer.write(pickle.dumps((segments, delta, options, report)))
    sys.stdout.flush()
    return 0
