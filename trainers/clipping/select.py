"""Choosing the clipping method of a run: ``"vmap"``, ``"ghost"`` or ``"auto"``.

* ``vmap`` — per-example gradients by ``vmap(grad)`` (:func:`trainers.dp_math.per_example_grads`);
  works for any model.
* ``ghost`` — :class:`trainers.clipping.GhostClipping`; an unsupported
  trainable layer is an :class:`~trainers.clipping.UnsupportedLayer` error.
* ``auto`` — ghost when every trainable layer is supported, else vmap; the
  choice and its reason are returned so the caller can say them once.

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
    return (
        "ghost",
        ghost,
        f"{requested} chose ghost: {layers} layer(s) by ghost norms"
        + (f", {len(plan.loose)} parameter(s) per example" if plan.loose else ""),
    )
