"""Keeping dp-accounting's per-order RDP warnings off the terminal.

At small σ or large q, dp-accounting's RDP accountant logs (through absl, i.e.
the standard-library logger ``"absl"``) one WARNING per Rényi order it drops.
They say nothing a user can act on — the result reports what matters — and
would bury progress bars, summaries and one-line errors.  This is the one
place that silences them; errors still show.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["quiet_accounting_logs"]


@contextlib.contextmanager
def quiet_accounting_logs() -> Iterator[None]:
    """Inside the block the ``absl`` logger shows errors only; its level is restored after."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
