"""``dpverify check-sampler``: is a sampler Poisson-compliant?

Exit codes: 0 compliant, 1 not compliant, 2 unusable input (cannot import
the factory, bad option).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpverify.cli._common import print_json
from dpverify.errors import InvalidArgument, UnusableInput

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check-sampler`` to the dpverify parser."""
    p = subparsers.add_parser(
        "check-sampler",
        help="test whether a sampler is Poisson-compliant",
        description=(
            "Build the sampler with FACTORY(dataset_size, sampling_rate, seed) for a few "
            "configurations, check the sampler protocol and step-addressability, and run the "
            "Poisson-compliance battery on its batches.  Exit 0 if compliant, 1 if not, "
            "2 if the factory cannot be loaded."
        ),
    )
    p.add_argument(
        "factory",
        metavar="MODULE:FACTORY",
        help="e.g. mypkg.samplers:MySampler or path/to/file.py:make_sampler; "
        "or a built-in sampler name (poisson, shuffle, ...)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=1e-3,
        help="probability that an honest Poisson sampler fails the check (default 1e-3)",
    )
    p.add_argument(
        "--config",
        action="append",
        metavar="N,q,T[,seed]",
        help="a configuration to try (repeatable; default: three built-in configurations)",
    )
    p.add_argument("--cap", type=int, default=None, help="cap for the built-in truncated_poisson")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument(
        "--quiet", action="store_true", help="print only the verdict line (no progress bar)"
    )
    p.set_defaults(handler=_check_sampler)


def _parse_config(text: str) -> Any:
    from dpverify.testing import SamplerConfig

    parts = [s.strip() for s in text.split(",")]
    if len(parts) not in (3, 4):
        raise InvalidArgument(f"--config={text!r} must be N,q,T or N,q,T,seed")
    try:
        n, q, t = int(parts[0]), float(parts[1]), int(parts[2])
        seed = int(parts[3]) if len(parts) == 4 else 0
    except ValueError:
        raise InvalidArgument(f"--config={text!r} must be N,q,T or N,q,T,seed (numbers)") from None
    return SamplerConfig(dataset_size=n, sampling_rate=q, steps=t, seed=seed)


def _load_factory(spec: str, cap: int | None) -> Callable[..., Any]:
    from dpverify.samplers import SAMPLER_NAMES, make_sampler

    if ":" not in spec:
        if spec in SAMPLER_NAMES:
            params = {"cap": cap} if cap is not None else {}
            if spec == "truncated_poisson" and cap is None:
                raise InvalidArgument("sampler 'truncated_poisson' needs its cap: pass --cap K")
            # A built-in that cannot be built (truncated_poisson without --cap,
            # --cap on a sampler without one) is a usage error, not a finding.
            make_sampler(spec, 1000, 0.1, 0, **params)
            return functools.partial(make_sampler, spec, **params)
        raise UnusableInput(
            f"{spec!r} must be MODULE:FACTORY or one of the built-in samplers {', '.join(SAMPLER_NAMES)}"
        )
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise UnusableInput(f"{spec!r} must be MODULE:FACTORY")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise UnusableInput(f"no such file: {module_name}")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            if mod_spec is None or mod_spec.loader is None:
                raise UnusableInput(f"cannot import {module_name}")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except UnusableInput:
        raise
    except Exception as exc:
        raise UnusableInput(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnusableInput(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UnusableInput(
            f"{spec!r} is not callable: expected FACTORY(dataset_size, sampling_rate, seed)"
        )
    return obj


def _check_sampler(args: argparse.Namespace) -> int:
    from dpverify.testing import inspect_sampler

    factory = _load_factory(args.factory, args.cap)
    configs = [_parse_config(c) for c in args.config] if args.config else None
    progress = not args.quiet and sys.stderr.isatty()
    report = inspect_sampler(factory, configs=configs, alpha=args.alpha, progress=progress)
    if args.json:
        print_json(report.to_dict())
    elif args.quiet:
        print(report.explain().splitlines()[0])
    else:
        print(report.explain())
    return 0 if report.compliant else 1
