"""The one error a recorder raises for a run it cannot certify."""

from __future__ import annotations

from dpverify.errors import DpverifyError

__all__ = ["UnsupportedRun"]


class UnsupportedRun(DpverifyError):
    """A recorder met a configuration whose privacy claim it cannot certify.

    The message is one line naming the configuration and what to use instead.
    """
