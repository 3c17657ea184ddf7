"""The training progress bar: step, ε spent so far, loss (tqdm on stderr).

Shown only when asked for and stderr is a terminal.  ε so far is the cheap
RDP upper bound (``dpverify.accounting.epsilon_poisson(..., accountant="rdp")``)
over the steps executed so far (repeats after a resume included), refreshed a
bounded number of times per run so accounting never dominates the step time.
"""

from __future__ import annotations

import math
import sys
from typing import Any

__all__ = ["TrainingProgress"]

#: Refresh ε about this many times over a run.
_EPSILON_REFRESHES = 50


class TrainingProgress:
    """A progress bar over logical steps.

    Args:
        total: planned number of logical steps.
        initial: first step of this session (the resume point).
        enabled: show the bar (also requires stderr to be a terminal).
        sampling_rate, noise_multiplier, delta: for ε so far.
        executed_before: steps executed before this session (resumes).
        label: text before the bar.
    """

    def __init__(
        self,
        *,
        total: int,
        initial: int,
        enabled: bool,
        sampling_rate: float,
        noise_multiplier: float,
        delta: float,
        executed_before: int = 0,
        label: str = "train",
    ) -> None:
        self._q = sampling_rate
        self._sigma = noise_multiplier
        self._delta = delta
        self._executed_before = executed_before
        self._every = max(1, total // _EPSILON_REFRESHES)
        self._epsilon: float | None = None
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=label, unit="step", file=sys.stderr)

    def update(self, step: int, executed: int, loss: float | None) -> None:
        """Advance after logical step ``step``; ``executed`` = steps run this session."""
        if self._bar is None:
            return
        if executed == 1 or step % self._every == 0:
            self._epsilon = self._epsilon_so_far(self._executed_before + executed)
        postfix = {}
        if self._epsilon is not None:
            postfix["eps"] = f"{self._epsilon:.3g}"
        if loss is not None and math.isfinite(loss):
            postfix["loss"] = f"{loss:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def _epsilon_so_far(self, steps: int) -> float | None:
        if self._sigma <= 0:
            return math.inf
        from dpverify._logs import quiet_accounting_logs
        from dpverify.accounting import epsilon_poisson

        try:
            with quiet_accounting_logs():  # order-by-order warnings would break the bar
                return float(
                    epsilon_poisson(self._q, self._sigma, steps, self._delta, accountant="rdp")
                )
        except Exception:  # accounting unavailable: show the bar without ε
            return None

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
