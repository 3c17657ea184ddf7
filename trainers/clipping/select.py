"""Choosing the clipping method of a run: ``"vmap"``, ``"ghost"`` or ``"auto"``.

* ``vmap`` — per-example gradients by ``vmap(grad)`` (:func:`trainers.dp_math.per_example_grads`);
  works for any model.
* ``ghost`` — :class:`trainers.clipping.GhostClipping`; an unsupported
  trainable layer is an :class:`~trainers.clipping.UnsupportedLayer` error.
* ``auto`` — ghost when every trainable layer is supported AND the whole
  method holds no more per example than vmap (:mod:`trainers.clipping.cost`:
  e.g. a small CNN's unfolded patches and output gradients outweigh its
  per-example gradients), else vmap; the choice and its reason (with both
  costs) are returned so the caller can say them once.

Both compute the same clipped sum (tests/trainers/test_ghost.py), so the
choice changes speed and memory, never the mechanism.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpverify._validate import check_choice
from dpverify.errors import InvalidArgument

__all__ = ["CLIPPING_METHODS", "check_clipping", "resolve_clipping"]

#: Accepted values of ``DPSGDConfig.clipping`` and ``--clipping``.
CLIPPING_METHODS = ("vmap", "ghost", "auto")


def check_clipping(value: Any) -> str:
    """``value`` if it names a clipping method; :class:`InvalidArgument` otherwise."""
    return check_choice("clipping", value, CLIPPING_METHODS)


def resolve_clipping(
    requested: str,
    *,
    model_apply: Callable[[Any, Any], Any],
    loss_fn: Callable[[Any, Any], Any],
    trainable: tuple[bool, ...],
    precision: str,
    params: Any,
    x_one: Any,
    devices: int = 1,
    physical_batch_size: int | None = None,
    y_one: Any = None,
) -> tuple[str, Any, str]:
    """The method to use: ``(method, ghost_or_None, reason)``.

    Args:
        requested: ``"vmap"``, ``"ghost"`` or ``"auto"``.
        model_apply, loss_fn, trainable, precision: as for :class:`GhostClipping`.
        params: the parameters (shapes are used).
        x_one: one example, without batch axis (an array or a
            ``jax.ShapeDtypeStruct``).
        devices: devices each physical batch is split over (all processes
            together).  Ghost clipping is not verified on sharded runs (its
            per-example pass is not placed per device, and a sharded
            per-example computation against replicated parameters can mix
            examples), so ``auto`` then chooses vmap and ``ghost`` is refused.
        physical_batch_size: p, the batch ``auto`` compiles both methods at
            (:func:`trainers.clipping.cost.method_cost`; default 32).
        y_one: one label (default: an int32 class label).

    Raises:
        UnsupportedLayer: ``requested == "ghost"`` and a trainable layer has
            no ghost rule.
        InvalidArgument: ``requested == "ghost"`` on more than one device.
    """
    from trainers.clipping.ghost import GhostClipping, UnsupportedLayer

    check_clipping(requested)
    if requested == "vmap":
        return "vmap", None, "clipping=vmap requested"
    if devices > 1:
        if requested == "ghost":
            raise InvalidArgument(
                f"clipping='ghost' is not supported on {devices} devices yet; use clipping='vmap'"
            )
        return "vmap", None, f"auto chose vmap: ghost clipping is not verified on {devices} devices"
    ghost = GhostClipping(model_apply, loss_fn, trainable, precision)
    try:
        plan = ghost.plan(params, x_one)
    except UnsupportedLayer as exc:
        if requested == "ghost":
            raise
        why = str(exc).removesuffix("; use clipping='vmap'")
        return "vmap", None, f"auto chose vmap: {why}"
    layers = len(plan.layers)
    what = f"{layers} layer(s) by ghost norms" + (
        f", {len(plan.loose)} parameter(s) per example" if plan.loose else ""
    )
    if requested == "ghost":
        return "ghost", ghost, f"clipping=ghost requested: {what}"
    from trainers.clipping.cost import DEFAULT_BATCH, method_cost

    cost = method_cost(
        model_apply=model_apply,
        loss_fn=loss_fn,
        trainable=trainable,
        precision=precision,
        params=params,
        x_one=x_one,
        ghost=ghost,
        batch=physical_batch_size or DEFAULT_BATCH,
        y_one=y_one,
    )
    if cost.cheaper == "vmap":
        return "vmap", None, f"auto chose vmap: cheaper per example; {cost.describe()}"
    return "ghost", ghost, f"auto chose ghost: {what}; {cost.describe()}"
