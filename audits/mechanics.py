"""Mechanics check: every recorded step clipped and noised as declared.

For each executed step t, with the step's clip norm C_t and noise multiplier
σ_t (the step's own values, else the header's), the recorded values must satisfy

* ``C_t`` > 0 (a per-step C_t or σ_t different from the header's is allowed:
  it is recorded, counted in ``details`` and accounted per segment by the
  privacy check);
* ``noise_std`` = σ_t·C_t (relative tolerance 1e-5: float32 rounding) — the
  Gaussian mechanism's sensitivity is C_t, so its standard deviation must be
  σ_t·C_t, not σ_t;
* ``max_clipped_norm`` ≤ C_t·(1 + 1e-5) and finite — clipping happened per
  example, before summation;
* ``noise_draws`` = 1 — noise is added once per logical step, not once per
  physical batch (that would be √(draws)·σC noise, and accounting per draw);
* ``denominator`` is a public constant: the same at every step (or, where the
  per-step rate changes, q_t·N or int(q_t·N) at each step).  Its value does not
  change ε — a constant other than q·N (Opacus divides by ``int(q·N)``) only
  rescales the learning rate, which is a warning.  A denominator that tracks
  the realised batch size L_t refutes: dividing by L_t makes the output's scale
  depend on private data (Abadi et al.'s analysis assumes a fixed divisor);
* ``num_clipped`` ≤ the batch size, and ``num_nonfinite`` ≤ the batch size.

Non-finite examples (``num_nonfinite``: real examples whose loss or gradient
was not finite) are not a violation — the trainer gives them clip factor 0, so
each contributes exactly zero and the update stays finite — but they are
reported (how many, in how many steps): they usually mean broken data or a
diverging model.

Fields a ledger does not record (e.g. runs imported from other frameworks
without ``noise_std``) cannot be checked; the reason says how many steps lacked
them.  References: Abadi et al. 2016, arXiv:1607.00133, Algorithm 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from audits.check import CheckResult

__all__ = ["CLIP_TOLERANCE", "RELATIVE_TOLERANCE", "check_mechanics"]

_NAME = "mechanics"

#: Relative slack for recorded floats (float32 arithmetic in the trainer).
RELATIVE_TOLERANCE = 1e-5
#: A clipped norm may exceed C by this relative amount (float32 rounding).
CLIP_TOLERANCE = 1e-5


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RELATIVE_TOLERANCE * max(abs(a), abs(b), 1e-12)


class _Finding:
    """Counts steps violating one rule and remembers the first."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        self.count = 0
        self.first: str | None = None

    def add(self, example: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = example

    def describe(self, total: int) -> str:
        hint = f": {self.hint}" if self.hint else ""
        return f"{self.message} at {self.count} of {total} steps ({self.first}){hint}"


def check_mechanics(header: Any, steps: Sequence[Any]) -> CheckResult:
    """Check the clip and noise mechanics recorded for every step.

    Args:
        header: the run header.
        steps: every executed :class:`dpverify.ledger.Step`, in ledger order.

    Returns:
        ``fail`` naming each violated rule (how many steps, the first one, and
        what the numbers say in plain words); ``skip`` when there are no steps;
        else ``pass`` (the reason says which fields were not recorded).
    """
    if not steps:
        return CheckResult(name=_NAME, status="skip", reason="the ledger records no steps")
    rules = {
        "clip_norm": _Finding("clip norm is not positive"),
        "noise_std": _Finding("noise std is not σ·C"),
        "clipped_norm": _Finding("a clipped gradient norm exceeds C", "clipping after summation?"),
        "noise_draws": _Finding("noise drawn more than once", "noise per physical batch?"),
        "denominator": _Finding(
            "denominator is not a public constant",
            "dividing by the realised batch size makes the scale depend on private data",
        ),
        "num_clipped": _Finding(
            "more examples clipped than sampled", "padding rows not masked out?"
        ),
    }
    rules["num_nonfinite"] = _Finding("more non-finite examples than sampled")
    nonfinite_examples = nonfinite_steps = 0
    # Which bug a clipped norm above C points to: clipped = pre-clip norm at every
    # violating step means no per-example clipping happened (clipping after summation,
    # or none); clipped < pre-clip means examples were clipped, at a larger norm.
    clipped_below_raw = clipped_as_raw = 0
    missing = {"noise_std": 0, "max_clipped_norm": 0, "noise_draws": 0, "denominator": 0}
    varying_clip = varying_sigma = 0
    sigma_std_hint = 0
    den0 = header.denominator
    dens: list[tuple[int, float, int, float]] = []
    worst_clipped = 0.0
    for s in steps:
        c = s.clip_norm if s.clip_norm is not None else header.clip_norm
        sigma = s.noise_multiplier if s.noise_multiplier is not None else header.noise_multiplier
        varying_clip += not _close(c, header.clip_norm)
        varying_sigma += not _close(sigma, header.noise_multiplier)
        if c <= 0:
            rules["clip_norm"].add(f"step {s.step}: C={c:g}")
        if s.noise_std is None:
            missing["noise_std"] += 1
        elif not _close(s.noise_std, sigma * c):
            rules["noise_std"].add(
                f"step {s.step}: recorded {s.noise_std:.6g}, expected σ·C = {sigma * c:.6g}"
            )
            sigma_std_hint += _close(s.noise_std, sigma)
        if s.max_clipped_norm is None:
            missing["max_clipped_norm"] += 1
        else:
            m = s.max_clipped_norm
            if not math.isfinite(m) or m > c * (1.0 + CLIP_TOLERANCE):
                rules["clipped_norm"].add(f"step {s.step}: norm {m:.6g} > C = {c:g}")
                raw = s.max_grad_norm
                if raw is not None and math.isfinite(m) and math.isfinite(raw):
                    if m < raw * (1.0 - CLIP_TOLERANCE):
                        clipped_below_raw += 1
                    else:
                        clipped_as_raw += 1
                worst_clipped = m if not math.isfinite(m) else max(worst_clipped, m / c)
        if s.noise_draws is None:
            missing["noise_draws"] += 1
        elif s.noise_draws != 1:
            rules["noise_draws"].add(f"step {s.step}: {s.noise_draws} draws")
        if s.denominator is None:
            missing["denominator"] += 1
        else:
            q_t = s.sampling_rate if s.sampling_rate is not None else header.sampling_rate
            dens.append((s.step, float(s.denominator), int(s.batch_size), float(q_t)))
        nonfinite = getattr(s, "num_nonfinite", None)
        if nonfinite:
            nonfinite_examples += nonfinite
            nonfinite_steps += 1
            if nonfinite > s.batch_size:
                rules["num_nonfinite"].add(
                    f"step {s.step}: {nonfinite} non-finite of {s.batch_size} sampled"
                )
        if s.num_clipped is not None and s.num_clipped > s.batch_size:
            rules["num_clipped"].add(
                f"step {s.step}: {s.num_clipped} clipped of {s.batch_size} sampled"
            )
    den_note = _check_denominators(dens, header, rules["denominator"])
    if clipped_below_raw and not clipped_as_raw:
        rules["clipped_norm"].hint = "clipping at a larger norm than recorded?"
    elif clipped_below_raw:
        rules["clipped_norm"].hint = ""
    if sigma_std_hint and sigma_std_hint == rules["noise_std"].count:
        rules["noise_std"].message = "noise std is σ, not σ·C"
    failed = {k: r for k, r in rules.items() if r.count}
    details: dict[str, Any] = {
        "steps": len(steps),
        "violations": {k: r.count for k, r in rules.items()},
        "first_violation": {k: r.first for k, r in failed.items()},
        "unrecorded": missing,
        "steps_with_other_clip_norm": varying_clip,
        "steps_with_other_noise_multiplier": varying_sigma,
        "max_clipped_norm_over_c": worst_clipped or None,
        "nonfinite_examples": nonfinite_examples,
        "steps_with_nonfinite_examples": nonfinite_steps,
    }
    if failed:
        parts = [r.describe(len(steps)) for r in failed.values()]
        return CheckResult(name=_NAME, status="fail", reason="; ".join(parts), details=details)
    # Say only what was checked: a field no step recorded (JSON Lines imports,
    # hand-written ledgers) is taken as declared, which is a warning, not a pass.
    checked = {
        "noise_std": "noise std σ·C",
        "noise_draws": "one noise draw per step",
        "max_clipped_norm": "clipped norms ≤ C",
        "denominator": den_note or f"denominator {den0:g}",
    }
    verified = [text for k, text in checked.items() if missing[k] < len(steps)]
    gaps = [f"{k} at {v}" for k, v in missing.items() if v]
    note = f"; not recorded (unchecked): {', '.join(gaps)} steps" if gaps else ""
    if nonfinite_examples:
        verified.append(
            f"{nonfinite_examples} non-finite example(s) in {nonfinite_steps} step(s) "
            "contributed zero (clip factor 0)"
        )
    den_warning = dens and den_note and "differs from q·N" in den_note
    details["denominator_warning"] = den_note if den_warning else None
    if den_warning and not gaps:
        return CheckResult(
            name=_NAME,
            status="warn",
            reason=f"{len(steps)} steps: {', '.join(verified)}",
            details=details,
        )
    if gaps:
        what = ", ".join(verified) if verified else "nothing beyond the declared clip norm and σ"
        return CheckResult(
            name=_NAME,
            status="warn",
            reason=(
                f"{len(steps)} steps: verified {what}{note} — those are taken as "
                "declared, not checked"
            ),
            details=details,
        )
    return CheckResult(
        name=_NAME,
        status="pass",
        reason=f"{len(steps)} steps: {', '.join(verified)}",
        details=details,
    )


def _public_rate_denominator(d: float, q: float, n: int) -> bool:
    """Whether ``d`` is q·N or one of its integer conventions (int, round, ceil)."""
    qn = q * n
    return _close(d, qn) or d in (math.floor(qn), round(qn), math.ceil(qn))


def _check_denominators(
    dens: list[tuple[int, float, int, float]], header: Any, finding: _Finding
) -> str | None:
    """Record a finding when the denominator is not a public constant; return the note.

    ``dens`` holds ``(step, denominator, batch size, q_t)`` of every step that
    recorded one.  Returns the text that says what was verified (with a warning
    when the constant differs from q·N), or ``None`` when nothing was recorded.
    """
    if not dens:
        return None
    n = header.dataset_size
    first = dens[0][1]
    if all(_close(d, first) for _, d, _, _ in dens):
        qn = header.sampling_rate * n
        if _close(first, qn) or len({q for *_, q in dens}) > 1:
            return f"denominator a public constant ({first:g})"
        how = " (int(q·N), as Opacus divides)" if first == math.floor(qn) else ""
        return (
            f"denominator a public constant {first:g}{how}, which differs from q·N = {qn:g}: "
            "it only rescales the learning rate"
        )
    sizes = {b for _, _, b, _ in dens}
    tracking = [(t, d, b) for t, d, b, _ in dens if _close(d, max(b, 1)) or _close(d, b)]
    if len(sizes) > 1 and 2 * len(tracking) >= len(dens):
        for t, d, b in tracking:
            finding.add(f"step {t}: divided by {d:g} = its batch size {b}")
        finding.message = "denominator tracks the realised batch size"
        return None
    if all(_public_rate_denominator(d, q, n) for _, d, _, q in dens):
        return "denominator q_t·N at every step (public per-step rate)"
    for t, d, _, q in dens:
        if not _public_rate_denominator(d, q, n) and not _close(d, first):
            finding.add(f"step {t}: divided by {d:g}, first step {first:g}, q·N = {q * n:g}")
    return None
