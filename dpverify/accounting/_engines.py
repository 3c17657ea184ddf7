"""The three accountants, each run on grouped (q, σ) events: ε(δ) and δ(ε).

* **RDP** (``dp_accounting.rdp.RdpAccountant``): an upper bound, loose by a
  few percent; the conversion to (ε, δ) is Proposition 12 of Canonne, Kamath &
  Steinke 2020 (arXiv:2004.00010).  When the optimal order lies at the edge of
  the order grid the result says so (a wider grid could give a smaller ε).
* **PLD** (``dp_accounting.pld.PLDAccountant``, pessimistic discretisation):
  tight up to the discretisation interval (Koskela et al. 2020; Doroshenko et
  al. 2022, arXiv:2207.04380).  When δ is below the probability mass its
  discretisation resolves it returns ε = ∞: that is *unavailable*, not a bound.
* **PRV** (``prv_accountant``, see :mod:`dpverify.accounting._prv`): lower /
  estimate / upper with the stated ``eps_error`` and ``delta_error`` (Gopi, Lee
  & Wutschitz 2021, arXiv:2106.02848); a run's distinct (q, σ) pairs are
  composed exactly (heterogeneous composition).

:func:`timed` reports the libraries' *declared* failures (a ``ValueError``,
``RuntimeError``, ``ArithmeticError`` or ``MemoryError`` raised inside
dp-accounting, prv-accountant, SciPy or NumPy, or the PRV grid limit) as
"unavailable" with the library's message; any other exception is a bug and
propagates.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dpverify.accounting.report import AccountantResult
from dpverify.errors import InvalidArgument

__all__ = [
    "LIBRARY_FAILURES",
    "pld_delta",
    "pld_delta_groups",
    "pld_epsilon",
    "pld_epsilon_groups",
    "prv_delta",
    "prv_epsilon",
    "rdp_delta",
    "rdp_epsilon",
    "timed",
]

#: Exception types the accountant libraries raise for settings they cannot handle.
LIBRARY_FAILURES: tuple[type[BaseException], ...] = (
    ValueError,
    RuntimeError,
    ArithmeticError,
    MemoryError,
)
_LIBRARY_MODULES = ("dp_accounting", "prv_accountant", "scipy", "numpy")


def is_library_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a declared failure raised inside an accountant library.

    Our own grid limit (:class:`dpverify.accounting._prv.GridTooLarge`) counts;
    a ``ValueError`` raised by dpverify's own code does not (it is a bug).
    """
    from dpverify.accounting._prv import GridTooLarge

    if isinstance(exc, GridTooLarge):
        return True
    if isinstance(exc, InvalidArgument) or not isinstance(exc, LIBRARY_FAILURES):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    origin = frames[-1].filename.replace("\\", "/")
    return any(f"/{mod}/" in origin for mod in _LIBRARY_MODULES)


def timed(name: str, fn: Callable[..., tuple[Any, str | None, dict]], *args: Any) -> AccountantResult:
    """Run one accountant; a declared library failure becomes "unavailable" with its message."""
    start = time.perf_counter()
    try:
        epsilon, reason, details = fn(*args)
    except Exception as exc:
        if not is_library_failure(exc):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        epsilon, reason, details = None, f"{name.upper()} unavailable: {msg}", {}
    return AccountantResult(
        name=name,
        epsilon=epsilon,
        reason=reason,
        seconds=time.perf_counter() - start,
        details=details,
    )


def relation(neighbouring: str):  # -> dp_accounting.NeighboringRelation
    import dp_accounting as dpa

    return {
        "add_remove": dpa.NeighboringRelation.ADD_OR_REMOVE_ONE,
        "replace_one": dpa.NeighboringRelation.REPLACE_ONE,
    }[neighbouring]


def _rdp_accountant(event, neighbouring: str, orders: Sequence[float] | None):
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(
        list(orders) if orders is not None else None, neighboring_relation=relation(neighbouring)
    )
    acc.compose(event)
    return acc


def _pld_accountant(event, neighbouring: str, discretization: float):
    from dp_accounting import pld

    acc = pld.PLDAccountant(
        neighboring_relation=relation(neighbouring),
        value_discretization_interval=discretization,
    )
    acc.compose(event)
    return acc


def rdp_epsilon(event, delta: float, neighbouring: str, orders: Sequence[float] | None):
    """RDP's ε at δ, with the optimal order (and a warning when it is at the grid's edge)."""
    acc = _rdp_accountant(event, neighbouring, orders)
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    grid = [float(o) for o in acc.orders]
    details: dict[str, Any] = {"order": float(order), "orders": (grid[0], grid[-1])}
    reason = None
    if math.isfinite(eps) and eps > 0 and float(order) in (grid[0], grid[-1]):
        reason = (
            f"optimal RDP order {float(order):g} is at the edge of the order grid "
            f"[{grid[0]:g}, {grid[-1]:g}]: a wider grid may give a smaller ε"
        )
        details["warning"] = reason
    return float(eps), reason, details


def _pld_outcome(eps: float, delta: float, discretization: float):
    """``(ε or None, why unavailable or None, details)``: PLD's ∞ is unavailable, not a bound."""
    details = {"value_discretization_interval": discretization}
    if math.isinf(eps):
        return (
            None,
            (
                f"PLD unavailable: it gives ε = ∞ at δ = {delta:g}, below the probability "
                "mass its discretisation resolves (every step has noise, so this is not a "
                "bound; see RDP and PRV)"
            ),
            details,
        )
    return eps, None, details


def pld_epsilon(event, delta: float, neighbouring: str, discretization: float):
    """PLD's ε at δ; ``None`` (unavailable, not a bound) when it returns ∞ for a noisy run."""
    acc = _pld_accountant(event, neighbouring, discretization)
    eps = float(acc.get_epsilon(delta))
    return _pld_outcome(eps, delta, discretization)


def pld_epsilon_groups(
    groups: Sequence[tuple[tuple[float, float], int]],
    delta: float,
    neighbouring: str,
    discretization: float,
):
    """PLD's ε at δ for Poisson groups, each distinct pair's PLD built by :mod:`._fastpld`."""
    from dpverify.accounting._fastpld import composed_pld

    eps = float(composed_pld(groups, discretization, neighbouring).get_epsilon_for_delta(delta))
    return _pld_outcome(eps, delta, discretization)


def pld_delta_groups(
    groups: Sequence[tuple[tuple[float, float], int]],
    epsilon: float,
    neighbouring: str,
    discretization: float,
):
    """PLD's δ at ε for Poisson groups (see :func:`pld_epsilon_groups`)."""
    from dpverify.accounting._fastpld import composed_pld

    pld = composed_pld(groups, discretization, neighbouring)
    return float(pld.get_delta_for_epsilon(epsilon)), None, {}


def prv_epsilon(
    groups: Sequence[tuple[tuple[float, float], int]],
    delta: float,
    eps_error: float,
    delta_error: float,
):
    """PRV's ``upper`` ε at δ (details: lower, estimate, upper, errors) for Poisson groups."""
    from dpverify.accounting._prv import prv_epsilon_bounds, prv_mechanism

    prvs = [prv_mechanism(q, sigma) for (q, sigma), _ in groups]
    counts = [count for _, count in groups]
    lower, estimate, upper = prv_epsilon_bounds(
        prvs, counts, delta, eps_error=eps_error, delta_error=delta_error
    )
    if not math.isfinite(upper):
        return None, "PRV unavailable: δ is below the probability mass at infinity", {}
    details = {
        "lower": max(0.0, lower),
        "estimate": max(0.0, estimate),
        "upper": max(0.0, upper),
        "eps_error": eps_error,
        "delta_error": delta_error,
    }
    return details["upper"], None, details


def rdp_delta(event, epsilon: float, neighbouring: str, orders: Sequence[float] | None):
    """RDP's δ at ε."""
    return float(_rdp_accountant(event, neighbouring, orders).get_delta(epsilon)), None, {}


def pld_delta(event, epsilon: float, neighbouring: str, discretization: float):
    """PLD's δ at ε."""
    acc = _pld_accountant(event, neighbouring, discretization)
    return float(acc.get_delta(epsilon)), None, {}


def prv_delta(
    groups: Sequence[tuple[tuple[float, float], int]],
    epsilon: float,
    eps_error: float,
    delta_error: float,
):
    """PRV's upper δ at ε (details: lower, estimate, upper)."""
    from dpverify.accounting._prv import prv_delta_bounds, prv_mechanism

    lo, est, up = prv_delta_bounds(
        [prv_mechanism(q, s) for (q, s), _ in groups],
        [c for _, c in groups],
        epsilon,
        eps_error=eps_error,
        delta_error=delta_error,
    )
    details: Mapping[str, Any] = {"lower": max(0.0, lo), "estimate": max(0.0, est), "upper": up}
    return min(1.0, max(0.0, up)), None, dict(details)
