"""What a traced computation costs, read from its jaxpr (no compilation).

Two questions the masked trainer asks once per run, from the jaxpr of one
example's gradient computation (:meth:`trainers.dispatch.MaskedDPSGD._auto_fused_batches`):

* :func:`uses_convolution`: does it contain a ``conv_general_dilated``?
* :func:`matmul_flops`: how many floating-point operations do its matrix
  products and convolutions take?

Counting rule (the usual one, e.g. Kaplan et al. 2020, "Scaling Laws for
Neural Language Models", §2.1): a product with output of size O and
contraction size K costs 2·O·K (one multiply and one add per term).  A
convolution is the same product over its kernel window: 2·O·(kernel size ·
input features per group).  Element-wise work, reductions and gathers are not
counted; on the models this project trains they are a small share, and the
count is only used to tell a tiny model from a heavy one.  Sub-computations
are followed (``pjit``, ``custom_vjp``, ``remat``, …); a ``scan`` counts its
body ``length`` times, a ``while`` loop's body and each ``cond`` branch once
(the largest branch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

__all__ = ["matmul_flops", "uses_convolution"]


def _sub_jaxprs(value: Any) -> list[Any]:
    """The jaxprs held in one equation parameter (a jaxpr, closed or open, or a sequence)."""
    if hasattr(value, "jaxpr") and hasattr(value, "consts"):  # ClosedJaxpr
        return [value.jaxpr]
    if hasattr(value, "eqns") and hasattr(value, "invars"):  # Jaxpr
        return [value]
    if isinstance(value, tuple | list):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _eqn_flops(eqn: Any) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        out = eqn.outvars[0].aval.shape
        return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out = eqn.outvars[0].aval.shape
        out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
        window = math.prod(rhs) // rhs[out_feature_dim]  # kernel size · input features per group
        return 2.0 * math.prod(out) * window
    return 0.0


def matmul_flops(jaxpr: Any) -> float:
    """Floating-point operations of the matrix products and convolutions in ``jaxpr``.

    Args:
        jaxpr: a ``ClosedJaxpr`` (what ``jax.make_jaxpr`` returns) or a ``Jaxpr``.

    Returns:
        2·O·K summed over every ``dot_general`` and ``conv_general_dilated``
        (see the module docstring), sub-computations included.
    """
    total = 0.0
    for inner in _sub_jaxprs(jaxpr):
        for eqn in inner.eqns:
            total += _eqn_flops(eqn)
            name = eqn.primitive.name
            for key, value in eqn.params.items():
                subs = _sub_jaxprs(value)
                if not subs:
                    continue
                costs = [matmul_flops(s) for s in subs]
                if name == "cond" and key == "branches":
                    total += max(costs)
                elif name == "scan":
                    total += eqn.params.get("length", 1) * sum(costs)
                else:
                    total += sum(costs)
    return total


def _equations(jaxpr: Any) -> Iterator[Any]:
    """Every equation of ``jaxpr`` and of its sub-computations, each once."""
    for inner in _sub_jaxprs(jaxpr):
        for eqn in inner.eqns:
            yield eqn
            for value in eqn.params.values():
                yield from _equations(value)


def uses_convolution(jaxpr: Any) -> bool:
    """Whether ``jaxpr`` (or a sub-computation of it) contains a ``conv_general_dilated``."""
    return any(eqn.primitive.name == "conv_general_dilated" for eqn in _equations(jaxpr))
