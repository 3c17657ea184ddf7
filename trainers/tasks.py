"""Named tasks: a model, a data set and sensible DP-SGD defaults, by name.

``dpverify train --task NAME`` looks the name up here.

=====================  ==========================  ======================
task                   model                       data
=====================  ==========================  ======================
``digits-mlp``         MLP, one hidden layer       digits (embedded)
``digits-cnn``         CNN (GroupNorm), 1 stage    digits (embedded)
``digits-vit``         tiny ViT, patch 4, 1 block  digits (embedded)
``cifar10-cnn``        CNN (GroupNorm), 3 stages   CIFAR-10 arrays (local files)
``cifar10-vit``        small ViT, patch 4          CIFAR-10 arrays (local files)
``text-transformer``   transformer encoder         token-id arrays (local files)
=====================  ==========================  ======================

File layouts are in ``docs/data-formats.md``.  Every task builds its model
with ``make_model(num_classes)``; the text task's vocabulary is fixed at
:data:`TEXT_VOCAB_SIZE` ids, and its loader refuses files with larger ids (an
out-of-range id would be clamped silently by JAX's gather).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from dpverify.errors import InvalidArgument

__all__ = ["TASKS", "TEXT_VOCAB_SIZE", "Task", "get_task"]

#: Token ids the ``text-transformer`` task's embedding holds (0 is padding).
TEXT_VOCAB_SIZE = 8192


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


# --- data --------------------------------------------------------------------


def _digits(_path: str | None):
    from trainers.data import load_digits

    return load_digits()


def _require_path(task: str, path: str | None) -> str:
    if path is None:
        raise InvalidArgument(
            f"data_path=None: task {task!r} reads local files; give --data PATH "
            "(layout: docs/data-formats.md)"
        )
    return path


def _cifar10_loader(task: str) -> Callable[[str | None], Any]:
    def load(path: str | None):
        from trainers.data import load_cifar10

        return load_cifar10(_require_path(task, path))

    return load


def _text(path: str | None):
    from trainers.data import load_text_classification

    data = load_text_classification(_require_path("text-transformer", path))
    if data.vocab_size is not None and data.vocab_size > TEXT_VOCAB_SIZE:
        raise InvalidArgument(
            f"vocab_size={data.vocab_size}: task 'text-transformer' embeds at most "
            f"{TEXT_VOCAB_SIZE} token ids; re-tokenise with a smaller vocabulary"
        )
    return data


# --- models ------------------------------------------------------------------


def _mlp(num_classes: int):
    from trainers.models import MLP

    return MLP(num_classes=num_classes, hidden=(64,))


def _digits_cnn(num_classes: int):
    from trainers.models import CNN

    # One stage and a flattened head: on 8×8 digits global pooling throws away
    # where the strokes are (≈ 60% vs ≈ 92% held-out accuracy at the defaults).
    return CNN(
        num_classes=num_classes, channels=(32,), groups=4, global_pool=False, activation="relu"
    )


def _digits_vit(num_classes: int):
    from trainers.models import ViT

    # Four 4×4 patches, one block: ≈ 88% held-out accuracy at ε ≈ 2 (patch 2,
    # 16 tokens, two blocks: ≈ 62%; small data and DP noise favour few tokens).
    return ViT(num_classes=num_classes, patch_size=4, width=64, depth=1, num_heads=4, mlp_dim=128)


def _cifar10_cnn(num_classes: int):
    from trainers.models import CNN

    return CNN(num_classes=num_classes, channels=(32, 64, 128), groups=8)


def _cifar10_vit(num_classes: int):
    from trainers.models import ViT

    return ViT(num_classes=num_classes, patch_size=4, width=192, depth=6, num_heads=3, mlp_dim=768)


def _text_transformer(num_classes: int):
    from trainers.models import TextTransformer

    return TextTransformer(
        num_classes=num_classes,
        vocab_size=TEXT_VOCAB_SIZE,
        width=64,
        depth=2,
        num_heads=4,
        mlp_dim=128,
    )


# --- defaults ----------------------------------------------------------------

# Tuned for `dpverify demo` (digits-mlp, N = 1437, δ = 1e-5): ε ≈ 2.0 (PLD) and
# ≈ 92% held-out accuracy (two seeds); large batches, high σ, a bold Adam step.
_DIGITS_DEFAULTS = {
    "expected_batch_size": 256,
    "noise_multiplier": 4.5,
    "clip_norm": 1.0,
    "steps": 150,
    "learning_rate": 1.5e-2,
    "optimizer": "adam",
    "physical_batch_size": 64,
}

_DIGITS_VIT_DEFAULTS = {**_DIGITS_DEFAULTS, "learning_rate": 1e-2}

_CIFAR10_DEFAULTS = {
    "expected_batch_size": 256,
    "noise_multiplier": 1.0,
    "clip_norm": 1.0,
    "steps": 2000,
    "learning_rate": 1e-3,
    "optimizer": "adam",
    "physical_batch_size": 128,
}

_TEXT_DEFAULTS = {
    "expected_batch_size": 128,
    "noise_multiplier": 1.0,
    "clip_norm": 1.0,
    "steps": 1000,
    "learning_rate": 1e-3,
    "optimizer": "adam",
    "physical_batch_size": 64,
}

TASKS: dict[str, Task] = {
    "digits-mlp": Task("digits-mlp", _mlp, _digits, _DIGITS_DEFAULTS),
    "digits-cnn": Task("digits-cnn", _digits_cnn, _digits, _DIGITS_DEFAULTS),
    "digits-vit": Task("digits-vit", _digits_vit, _digits, _DIGITS_VIT_DEFAULTS),
    "cifar10-cnn": Task(
        "cifar10-cnn",
        _cifar10_cnn,
        _cifar10_loader("cifar10-cnn"),
        _CIFAR10_DEFAULTS,
        needs_data_path=True,
    ),
    "cifar10-vit": Task(
        "cifar10-vit",
        _cifar10_vit,
        _cifar10_loader("cifar10-vit"),
        _CIFAR10_DEFAULTS,
        needs_data_path=True,
    ),
    "text-transformer": Task(
        "text-transformer", _text_transformer, _text, _TEXT_DEFAULTS, needs_data_path=True
    ),
}


def get_task(name: str) -> Task:
    """The task called ``name``; :class:`InvalidArgument` naming it otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise InvalidArgument(
            f"task={name!r} is unknown; choose one of {', '.join(TASKS)}"
        ) from None
