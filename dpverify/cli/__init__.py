"""The ``dpverify`` command line.

The CLI parses and delegates; it does no work itself.  Each command family
lives in its own module exposing ``register(subparsers)``; a command's handler
returns its exit code.

Exit codes (every command): 0 success / certified / compliant, 1 a negative
finding (integrity failure, refuted claim, non-compliant sampler), 2 unusable
input (bad argument, missing or non-ledger path), 3 internal error (a bug in
dpverify), 130 interrupted (Ctrl-C).  Errors are one line on stderr, never a
traceback (set ``DPVERIFY_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from dpverify.errors import DpverifyError

__all__ = ["main"]

# Command modules, each with ``register(subparsers)``.  They must import only
# light modules at import time; heavy work (JAX) is imported inside handlers.
_COMMAND_MODULES = ("_ledger", "_sampler", "_epsilon", "_train", "_launch", "_audit")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full ``dpverify`` argument parser."""
    import importlib

    from dpverify import __version__

    parser = _Parser(
        prog="dpverify",
        description="Make the privacy claim of a DP training run checkable.",
    )
    parser.add_argument("--version", action="version", version=f"dpverify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"dpverify.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    from dpverify._logs import quiet_accounting_logs

    try:
        with quiet_accounting_logs():  # dp-accounting's per-order RDP warnings, every command
            return int(args.handler(args))
    except DpverifyError as exc:
        if os.environ.get("DPVERIFY_DEBUG"):
            raise
        sys.stderr.write(f"dpverify: error: {_one_line(exc)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "command", None) == "train":
            hint = (
                "; every completed step is in the ledger — rerun the same command with"
                " --resume to continue"
            )
        sys.stderr.write(f"dpverify: interrupted{hint}\n")
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError as exc:  # an input this machine cannot hold: bad input (exit 2), one line
        if os.environ.get("DPVERIFY_DEBUG"):
            raise
        why = f": {_one_line(exc)}" if str(exc) else ""
        sys.stderr.write(
            f"dpverify: error: not enough memory for this input{why} (the auditor streams "
            "O(N + T); free memory or audit on a larger machine)\n"
        )
        return 2
    except Exception as exc:  # last resort: one line, no traceback
        if os.environ.get("DPVERIFY_DEBUG"):
            raise
        extra = _missing_extra(exc)
        if extra is not None:
            sys.stderr.write(
                f"dpverify: error: this command needs the [{extra}] extra (no module named "
                f"{exc.name!r}): pip install 'dpverify[{extra}]'\n"  # type: ignore[attr-defined]
            )
            return 2
        sys.stderr.write(
            f"dpverify: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(set DPVERIFY_DEBUG=1 for a traceback)\n"
        )
        return 3


#: Optional dependency (top-level module) → the extra that installs it.
_EXTRAS = {"jax": "jax", "jaxlib": "jax", "flax": "jax", "optax": "jax", "sklearn": "jax",
           "torch": "opacus", "opacus": "opacus", "jax_privacy": "jax-privacy",
           "hypothesis": "testing"}  # fmt: skip


def _missing_extra(exc: BaseException) -> str | None:
    if not isinstance(exc, ModuleNotFoundError):
        return None
    return _EXTRAS.get((exc.name or "").split(".")[0])


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _entry() -> None:  # pragma: no cover - used by `python -m dpverify`
    raise SystemExit(main())
