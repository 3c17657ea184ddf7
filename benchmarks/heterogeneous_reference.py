"""Regenerate ``tests/accounting/heterogeneous_reference.json``: exact per-step compositions.

Each schedule is composed step by step with dp-accounting's own PLD
(``privacy_loss_distribution.from_gaussian_mechanism``, pessimistic estimate,
one PLD per executed step, no grouping and no dpverify code), so the reference
shares nothing with the accountant it checks.  This takes minutes (one PLD per
step: ~90 s per schedule on an idle core, dp-accounting 0.6.0), which is why the
values are stored; ``tests/accounting/test_heterogeneous.py`` recomputes a short
schedule live the same way.  The same composition with dp-accounting's
``PLDAccountant`` on a ``ComposedDpEvent`` of the 1 000 distinct
``PoissonSampledDpEvent`` (value_discretization_interval = 1e-3) gives the same ε
(1.7992 for the σ decay).

Run: ``python benchmarks/heterogeneous_reference.py [NAME ...]``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DISCRETIZATION = 1e-3


def schedules() -> dict[str, list[tuple[float, float]]]:
    """Name -> per-step (q, σ)."""
    steps = 1000
    decay = [1.5 - (1.5 - 0.8) * t / (steps - 1) for t in range(steps)]
    warm = [min(0.01, 0.001 + (0.01 - 0.001) * t / 199) for t in range(steps)]
    return {
        "sigma_decay_1.5_to_0.8": [(0.01, s) for s in decay],
        "q_warmup_sigma_decay": list(zip(warm, decay, strict=True)),
    }


def exact_epsilon(schedule: list[tuple[float, float]], delta: float) -> float:
    from dp_accounting.pld import privacy_loss_distribution as pld

    composed = None
    for q, sigma in schedule:
        step = pld.from_gaussian_mechanism(
            sigma, sampling_prob=q, value_discretization_interval=DISCRETIZATION
        )
        composed = step if composed is None else composed.compose(step)
    return float(composed.get_epsilon_for_delta(delta))


def main() -> None:
    from importlib.metadata import version

    delta = 1e-5
    names = sys.argv[1:] or list(schedules())
    out_path = Path(__file__).resolve().parents[1] / "tests/accounting/heterogeneous_reference.json"
    data = json.loads(out_path.read_text()) if out_path.exists() else {"cases": {}}
    for name in names:
        start = time.perf_counter()
        eps = exact_epsilon(schedules()[name], delta)
        data["cases"][name] = {"delta": delta, "pld_epsilon": eps}
        print(name, eps, f"{time.perf_counter() - start:.0f} s", flush=True)
    data["about"] = (
        f"exact per-step composition, dp-accounting {version('dp-accounting')} PLD "
        f"(pessimistic, value_discretization_interval={DISCRETIZATION}); schedules and "
        "command: python benchmarks/heterogeneous_reference.py"
    )
    out_path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
