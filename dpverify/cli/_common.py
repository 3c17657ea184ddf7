"""Small helpers shared by CLI command modules."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dpverify.errors import InvalidArgument


def positive_float(text: str) -> float:
    """argparse type: a float (range checks happen in the library, one message style)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def integer(text: str) -> int:
    """argparse type: an integer."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def print_json(obj: Any) -> None:
    """Write ``obj`` as one JSON document on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, allow_nan=False)
    sys.stdout.write("\n")


def require(condition: bool, message: str) -> None:
    """Raise :class:`InvalidArgument` with ``message`` unless ``condition``."""
    if not condition:
        raise InvalidArgument(message)
