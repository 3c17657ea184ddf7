"""Named tasks: a model, a data set and sensible DP-SGD defaults, by name.

``dpverify train --task NAME`` looks the name up here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from dpverify.errors import InvalidArgument

__all__ = ["TASKS", "Task", "get_task"]


@dataclasses.dataclass(frozen=True)
class Task:
    """A trainable task.

    Attributes:
        name: the CLI name (``"digits-mlp"``).
        make_model: ``make_model(num_classes) -> flax.linen.Module`` whose
            ``apply({"params": p}, x)`` maps a batch of inputs to logits.
        load_data: ``load_data(data_path) -> Dataset``; ``data_path`` is ``None``
            for embedded data sets, else a local file or folder.
        defaults: default hyperparameters (``expected_batch_size``,
            ``noise_multiplier``, ``clip_norm``, ``steps``, ``learning_rate``,
            ``physical_batch_size``, ``optimizer``).
        needs_data_path: true when the data must come from local files.
    """

    name: str
    make_model: Callable[[int], Any]
    load_data: Callable[[str | None], Any]
    defaults: Mapping[str, Any]
    needs_data_path: bool = False


def _digits(_path: str | None):
    from trainers.data import load_digits

    return load_digits()


def _mlp(num_classes: int):
    from trainers.models import MLP

    return MLP(num_classes=num_classes, hidden=(64,))


_DIGITS_DEFAULTS = {
    "expected_batch_size": 64,
    "noise_multiplier": 1.0,
    "clip_norm": 1.0,
    "steps": 300,
    "learning_rate": 2e-3,
    "optimizer": "adam",
    "physical_batch_size": 32,
}

TASKS: dict[str, Task] = {
    "digits-mlp": Task("digits-mlp", _mlp, _digits, _DIGITS_DEFAULTS),
}


def get_task(name: str) -> Task:
    """The task called ``name``; :class:`InvalidArgument` naming it otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise InvalidArgument(
            f"task={name!r} is unknown; choose one of {', '.join(TASKS)}"
        ) from None
