"""Configuration check: the run header is internally consistent.

What is checked:

* the declared sampler is one dpverify knows, and its recorded parameters
  match it (truncated Poisson declares an integer ``cap`` ≥ 1; plain Poisson
  declares no cap);
* the declared expected batch size agrees with q·N within 1 % (warning
  otherwise, with the reason: a public constant other than q·N — Opacus divides
  by ``int(q·N)`` — only rescales the learning rate; ε depends on q, which the
  sampling check verifies against the recorded indices, not on this number);
* δ < 1/N for the δ actually claimed (the seal's, else the header's; warning
  otherwise: an (ε, δ) guarantee with δ ≥ 1/N permits publishing one whole
  example outright, and the privacy check calls such a claim unverifiable);
* a privacy claim is made (warning otherwise).
"""

from __future__ import annotations

from typing import Any

from audits.check import CheckResult
from dpverify.accounting import NO_UPPER_BOUND_SAMPLERS

__all__ = ["NO_UPPER_BOUND_SAMPLERS", "POISSON_SAMPLERS", "check_configuration"]

_NAME = "configuration"

#: Declared samplers the Poisson battery tests (the second with its cap).
POISSON_SAMPLERS = ("poisson", "truncated_poisson")

# NO_UPPER_BOUND_SAMPLERS (re-exported): samplers with no valid ε upper bound in
# the accountant libraries; one definition, in dpverify.accounting.support.

#: Relative mismatch of expected batch size vs q·N tolerated.
BATCH_SIZE_TOLERANCE = 0.01


def _known_samplers() -> tuple[str, ...]:
    from dpverify import samplers

    return tuple(samplers.SAMPLER_NAMES)


def check_configuration(
    header: Any, *, claimed_epsilon: float | None = None, delta: float | None = None
) -> CheckResult:
    """Check the run header (:class:`dpverify.ledger.RunHeader`) for consistency.

    Args:
        header: the run header.
        claimed_epsilon: the claim being audited (the seal's if any, else the header's).
        delta: the δ of that claim (default: the header's).

    Returns:
        ``fail`` for an unknown sampler or parameters that contradict it;
        ``warn`` for an expected batch size other than q·N, δ ≥ 1/N or no
        claim; else ``pass``.
    """
    delta = header.delta if delta is None else delta
    n = header.dataset_size
    q = header.sampling_rate
    params = dict(header.sampler_params or {})
    failures: list[str] = []
    warnings: list[str] = []
    known = _known_samplers()
    sampler = header.sampler.lower() if isinstance(header.sampler, str) else header.sampler
    if sampler not in known:
        failures.append(
            f"sampler {header.sampler!r} is unknown (known: {', '.join(known)}): "
            "no test or accountant applies to it"
        )
    elif sampler == "truncated_poisson":
        cap = params.get("cap")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            failures.append(f"truncated Poisson must declare an integer cap >= 1, got cap={cap!r}")
    elif sampler == "cyclic_poisson" and (
        isinstance(params.get("cycle_length"), bool)
        or not isinstance(params.get("cycle_length"), int)
        or params["cycle_length"] < 1
    ):
        failures.append(
            "cyclic Poisson must declare an integer cycle_length >= 1, "
            f"got cycle_length={params.get('cycle_length')!r}"
        )
    elif sampler == "poisson" and params.get("cap") is not None:
        failures.append(
            f"plain Poisson sampling declares cap={params['cap']!r}: a capped sampler must "
            "be declared as 'truncated_poisson'"
        )
    expected = q * n
    declared = header.expected_batch_size
    if declared is not None and abs(declared - expected) > BATCH_SIZE_TOLERANCE * expected:
        convention = ""
        if declared == int(expected) or declared == round(expected):
            convention = f" (int(q·N) = {int(expected)}, Opacus's convention)"
        warnings.append(
            f"declared expected batch size {declared:g} differs from q·N = {expected:g}"
            f"{convention}: as a public constant it only rescales the learning rate; ε is "
            "accounted at q, which the sampling check verifies against the indices"
        )
    if delta >= 1.0 / n:
        warnings.append(
            f"claimed δ = {delta:g} is not below 1/N = {1.0 / n:.3g}: such a guarantee "
            "allows publishing an example outright (not a meaningful guarantee)"
        )
    if claimed_epsilon is None:
        warnings.append("the run claims no ε")
    details = {
        "dataset_size": n,
        "sampling_rate": q,
        "expected_batch_size": expected,
        "declared_expected_batch_size": declared,
        "denominator": header.denominator,
        "sampler": header.sampler,
        "sampler_params": params,
        "delta": delta,
        "delta_times_n": delta * n,
        "failures": failures,
        "warnings": warnings,
    }
    if failures:
        return CheckResult(name=_NAME, status="fail", reason="; ".join(failures), details=details)
    if warnings:
        return CheckResult(name=_NAME, status="warn", reason="; ".join(warnings), details=details)
    return CheckResult(
        name=_NAME,
        status="pass",
        reason=(
            f"declared sampler {header.sampler!r} and its parameters agree; expected batch "
            f"size q·N = {expected:g}; claimed δ = {delta:g} < 1/N"
        ),
        details=details,
    )
