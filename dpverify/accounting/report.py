"""Result types: one accountant's answer, and all three side by side."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from dpverify._validate import check_choice
from dpverify.accounting.support import ACCOUNTANTS

__all__ = ["AccountantResult", "DeltaReport", "EpsilonReport"]


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

    def __post_init__(self) -> None:
        for name in ACCOUNTANTS:
            res = getattr(self, name)
            if not isinstance(res, AccountantResult) or res.name != name:
                raise ValueError(f"{name} must be the {name} AccountantResult")

    @property
    def tight(self) -> float | None:
        """The tight reference ε: PLD if it answered, else PRV's upper bound, else ``None``."""
        if self.pld.epsilon is not None:
            return self.pld.epsilon
        return self.prv.epsilon

    @property
    def tight_name(self) -> str | None:
        """Which accountant :attr:`tight` comes from."""
        if self.pld.epsilon is not None:
            return "pld"
        if self.prv.epsilon is not None:
            return "prv"
        return None

    @property
    def upper(self) -> float | None:
        """The smallest ε any accountant certifies as an upper bound (``None`` if none)."""
        values = [r.epsilon for r in self.results() if r.epsilon is not None]
        return min(values) if values else None

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
