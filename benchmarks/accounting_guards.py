"""Speed of the accounting guards the unit tests check only for behaviour.

Unit tests hold no wall-clock limits (they would fail on a loaded machine and
pass on a fast one regardless of the code); the costs live here, one JSON
object per line on stdout::

    {"case": ..., "seconds": ..., "note": ...}

Cases: ε at σ = 0.02 (PLD/PRV skipped below σ = 0.1), ε over 10⁹ steps (PLD/PRV
skipped above ε = 1000 by RDP), a calibration whose target needs σ below the
tight accountants' floor (refused), and the RDP calls of the training
progress bar (200 step counts).  Before the guards the first three took
minutes.

Usage::

    python benchmarks/accounting_guards.py
"""

from __future__ import annotations

import json
import sys
import time


def _timed(case: str, fn, note: str) -> None:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    sys.stdout.write(json.dumps({"case": case, "seconds": round(seconds, 4), "note": note}) + "\n")


def main() -> int:
    from dpverify.accounting import (
        Segment,
        calibrate_noise_multiplier,
        compute_epsilon,
        epsilon_poisson,
    )
    from dpverify.errors import InvalidArgument

    epsilon_poisson(0.02, 0.9, 1, 1e-5, "rdp")  # warm imports and the one-step curve

    def refused() -> None:
        try:
            calibrate_noise_multiplier(1.0, 1, 0.5, 100.0, "pld")
        except InvalidArgument:
            return
        raise AssertionError("expected a refusal")

    _timed(
        "tiny_noise",
        lambda: compute_epsilon(Segment(sampling_rate=0.01, noise_multiplier=0.02, steps=1000), 1e-5),
        "sigma=0.02: PLD/PRV not run",
    )
    _timed(
        "astronomical_epsilon",
        lambda: compute_epsilon(Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10**9), 1e-5),
        "1e9 steps: PLD/PRV not run",
    )
    _timed("calibration_below_floor", refused, "target 100 at q=1: refused")
    _timed(
        "progress_bar_rdp_200_calls",
        lambda: [epsilon_poisson(0.02, 0.9, t, 1e-5, "rdp") for t in range(1, 201)],
        "200 RDP calls",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
