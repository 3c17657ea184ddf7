"""Helpers shared by the model modules (private)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from dpverify.errors import InvalidArgument

#: Activation functions a model may name.
ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "elu": nn.elu,
}


def activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The activation called ``name``; :class:`InvalidArgument` otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise InvalidArgument(
            f"activation={name!r} must be one of {', '.join(ACTIVATIONS)}"
        ) from None


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise :class:`InvalidArgument` unless ``divisor`` divides ``value``."""
    if divisor <= 0 or value % divisor:
        raise InvalidArgument(f"{name}={value} must be a multiple of {divisor_name}={divisor}")
