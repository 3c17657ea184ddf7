"""Result types: one accountant's answer, and all three side by side."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from dpverify._validate import check_choice
from dpverify.accounting.support import ACCOUNTANTS

__all__ = ["TIGHT_SLACK", "AccountantResult", "DeltaReport", "EpsilonReport"]

#: Relative (and absolute) slack within which a tight accountant's ε is taken as agreeing.
TIGHT_SLACK = 1e-3


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccountantResult:
    """What one accountant said.

    Attributes:
        name: ``"rdp"``, ``"pld"`` or ``"prv"``.
        epsilon: ε at the report's δ (may be ``inf`` when a step had σ = 0);
            ``None`` when the accountant could not answer.
        reason: why ``epsilon`` is ``None``, or a caveat on it (e.g. the RDP
            optimal order at the edge of the order grid); ``None`` otherwise.
        seconds: wall time the accountant took.
        details: accountant specifics: RDP ``order``; PLD
            ``value_discretization_interval``; PRV ``lower``, ``estimate``,
            ``upper`` (``epsilon`` is ``upper``), ``eps_error``, ``delta_error``.
    """

    name: str
    epsilon: float | None
    reason: str | None = None
    seconds: float = 0.0
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("name", self.name, ACCOUNTANTS)
        if self.epsilon is not None:
            object.__setattr__(self, "epsilon", float(self.epsilon))
        if self.epsilon is None and not self.reason:
            raise ValueError("an accountant that could not answer must give a reason")

    @property
    def answered(self) -> bool:
        """Whether the accountant produced an ε."""
        return self.epsilon is not None

    def to_json(self) -> dict[str, Any] | None:
        """The JSON value for this accountant (``None`` if no finite ε)."""
        eps = _finite_or_none(self.epsilon)
        if eps is None:
            return None
        if self.name == "prv":
            return {
                # (a run of zero steps has ε = 0 and no PRV grid to report)
                "lower": float(self.details.get("lower", eps)),
                "estimate": float(self.details.get("estimate", eps)),
                "upper": eps,
            }
        if self.name == "rdp" and "order" in self.details:
            return {"epsilon": eps, "order": float(self.details["order"])}
        return {"epsilon": eps}

    def json_reason(self) -> str | None:
        """The reason shown in JSON: the stated one, or why ε is not finite."""
        if self.epsilon is not None and not math.isfinite(self.epsilon):
            return self.reason or "ε is infinite: some step had noise_multiplier = 0"
        return self.reason


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpsilonReport:
    """ε(δ) from RDP, PLD and PRV side by side, for one run.

    Attributes:
        rdp, pld, prv: each accountant's :class:`AccountantResult`.
        delta: δ at which ε was computed.
        steps: executed steps accounted.
        sampler: the sampler name the events were built for.
        neighbouring: ``"add_remove"`` or ``"replace_one"``.
        lower_bound: a valid *lower* bound on ε where one is known and no upper
            bound is (shuffled batches; see :func:`shuffle_lower_bound`), else ``None``.
        notes: plain-words remarks (e.g. why the Poisson ε does not apply).
        rounding: how a schedule with many distinct (q, σ) pairs was bracketed
            (``None`` when every pair was composed exactly).
    """

    rdp: AccountantResult
    pld: AccountantResult
    prv: AccountantResult
    delta: float
    steps: int
    sampler: str = "poisson"
    neighbouring: str = "add_remove"
    lower_bound: float | None = None
    notes: tuple[str, ...] = ()
    rounding: str | None = None

    def __post_init__(self) -> None:
        for name in ACCOUNTANTS:
            res = getattr(self, name)
            if not isinstance(res, AccountantResult) or res.name != name:
                raise ValueError(f"{name} must be the {name} AccountantResult")

    @property
    def upper(self) -> float | None:
        """The smallest ε any accountant establishes as an upper bound (``None`` if none).

        RDP, pessimistic PLD and PRV's ``upper`` are each a valid upper bound
        (bracketed runs: computed on dominating groups), so the run's ε is at
        most the smallest of them.
        """
        values = [r.epsilon for r in self.results() if r.epsilon is not None]
        return min(values) if values else None

    @property
    def upper_name(self) -> str | None:
        """Which accountant :attr:`upper` comes from."""
        answered = [r for r in self.results() if r.epsilon is not None]
        if not answered:
            return None
        return min(answered, key=lambda r: r.epsilon if r.epsilon is not None else math.inf).name

    @property
    def disagreements(self) -> tuple[str, ...]:
        """Accountants whose ε exceeds another's valid upper bound beyond their stated errors.

        PLD's pessimistic estimate above RDP's or PRV's upper bound (by more than
        its relative discretisation slack) means its discretisation failed to
        resolve the run (tiny q, tiny δ): PLD is then set aside as a reference.
        """
        out = []
        pld = self.pld.epsilon
        if pld is not None and math.isfinite(pld):
            for other in (self.rdp, self.prv):
                bound = other.epsilon
                if bound is not None and pld > bound * (1 + TIGHT_SLACK) + TIGHT_SLACK:
                    label = "RDP" if other.name == "rdp" else "PRV's upper bound"
                    out.append(
                        f"PLD ε = {pld:.4g} exceeds {label} {bound:.4g}, a valid upper bound, "
                        "beyond its discretisation error: PLD is set aside"
                    )
        return tuple(out)

    @property
    def tight(self) -> float | None:
        """The tight estimate ε, or ``None``.

        PLD when it composed every (q, σ) pair exactly (``details["pairs_exact"]``
        for a run whose RDP and PRV were bracketed) and it agrees with the
        upper bounds (:attr:`disagreements`); else PRV's estimate when it was
        composed exactly (error at most ``eps_error``, Gopi et al. 2021); else
        ``None`` (a bracketed run has a range, see :attr:`lower`).
        """
        name = self.tight_name
        if name == "pld":
            return self.pld.epsilon
        if name == "prv":
            return float(self.prv.details["estimate"])
        return None

    @property
    def tight_name(self) -> str | None:
        """Which accountant :attr:`tight` comes from (``"pld"``, ``"prv"`` or ``None``)."""
        pld = self.pld.epsilon
        pld_exact = self.rounding is None or bool(self.pld.details.get("pairs_exact"))
        if pld_exact and pld is not None and math.isfinite(pld) and not self.disagreements:
            return "pld"
        if self.rounding is not None:
            return None
        if self.prv.epsilon is not None and "estimate" in self.prv.details:
            return "prv"
        return None

    @property
    def lower(self) -> float | None:
        """The largest ε the accountants establish as a *lower* bound, with their errors.

        PRV's ``lower`` (on groups the run dominates when bracketed), or a
        shuffle :attr:`lower_bound`; ``None`` when there is none.
        """
        values = []
        if self.prv.epsilon is not None and "lower" in self.prv.details:
            values.append(float(self.prv.details["lower"]))
        if self.lower_bound is not None:
            values.append(float(self.lower_bound))
        return max(values) if values else None

    def results(self) -> tuple[AccountantResult, ...]:
        """``(rdp, pld, prv)``."""
        return (self.rdp, self.pld, self.prv)

    def to_json(self) -> dict[str, Any]:
        """``{"rdp": {...}|null, "pld": {...}|null, "prv": {"lower","estimate","upper"}|null,
        "reasons": {name: reason}}``; ``reasons`` names every null (and caveated) accountant."""
        out: dict[str, Any] = {name: getattr(self, name).to_json() for name in ACCOUNTANTS}
        reasons = {}
        for res in self.results():
            why = res.json_reason()
            if why:
                reasons[res.name] = why
        out["reasons"] = reasons
        if self.rounding:
            out["rounding"] = self.rounding
        if self.disagreements:
            out["disagreements"] = list(self.disagreements)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable (non-finite numbers become ``None``)."""
        return {
            "delta": self.delta,
            "steps": self.steps,
            "sampler": self.sampler,
            "neighbouring": self.neighbouring,
            "lower_bound": _finite_or_none(self.lower_bound),
            "notes": list(self.notes),
            "rounding": self.rounding,
            "disagreements": list(self.disagreements),
            "accountants": {
                r.name: {
                    "epsilon": _finite_or_none(r.epsilon),
                    "reason": r.json_reason(),
                    "seconds": r.seconds,
                    "details": {k: _jsonable(v) for k, v in r.details.items()},
                }
                for r in self.results()
            },
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeltaReport:
    """δ(ε) from each accountant (``None`` where it could not answer).

    Attributes:
        epsilon: the ε at which δ was computed.
        deltas: accountant name → δ (PRV: its upper bound on δ) or ``None``.
        reasons: accountant name → why it gave no δ.
        details: accountant name → specifics (PRV ``lower``/``estimate``/``upper``).
    """

    epsilon: float
    deltas: Mapping[str, float | None]
    reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)
    details: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def tight(self) -> float | None:
        """PLD's δ, else PRV's upper δ, else ``None``."""
        for name in ("pld", "prv"):
            if self.deltas.get(name) is not None:
                return self.deltas[name]
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return _jsonable(value.item())
    except ImportError:  # pragma: no cover
        pass
    return value
