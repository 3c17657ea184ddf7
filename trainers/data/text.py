"""Text classification as token-id arrays from local files.

Layout (``docs/data-formats.md``): an ``.npz`` archive, or a directory of
``.npy`` files, holding ``x_train`` and ``y_train`` and optionally ``x_test``
and ``y_test`` (both or neither) and integer scalars ``vocab_size`` and
``num_classes``.

* Texts are already tokenised: integer token ids ``(N, L)``, one row per text,
  padded (or cut) to a common length ``L``.  Id 0 is padding
  (:data:`trainers.models.PAD_ID`); real tokens are ``1 … vocab_size − 1``.
* ``vocab_size`` defaults to one more than the largest id; every id must be
  below it (JAX would clamp an out-of-range id silently).
* Labels are integers in ``[0, num_classes)``, shape ``(N,)`` or ``(N, 1)``.
* Without a test split, a reproducible random ``test_fraction`` of the training
  arrays is held out.
"""

from __future__ import annotations

import os

import numpy as np

from dpverify.errors import InvalidArgument
from trainers.data._dataset import Dataset
from trainers.data._files import ArrayFile, check_labels, holdout_split, optional_scalar

__all__ = ["load_text_classification"]


def _tokens(where: str, x: np.ndarray) -> np.ndarray:
    """``x`` as int32 ``(N, L)`` token ids, checked non-negative."""
    if not np.issubdtype(x.dtype, np.integer):
        raise InvalidArgument(f"{where} has dtype {x.dtype}: token ids must be integers")
    if x.ndim != 2 or x.shape[1] < 1:
        raise InvalidArgument(f"{where} has shape {x.shape}: expected (N, L) token ids, L >= 1")
    if x.size and int(x.min()) < 0:
        raise InvalidArgument(f"{where} holds token id {int(x.min())}: ids must be >= 0")
    if x.size and int(x.max()) > np.iinfo(np.int32).max:
        raise InvalidArgument(f"{where} holds token id {int(x.max())}: ids must fit in int32")
    return np.ascontiguousarray(x, dtype=np.int32)


def _check_vocab(where: str, x: np.ndarray, vocab_size: int) -> None:
    if x.size and int(x.max()) >= vocab_size:
        raise InvalidArgument(
            f"{where} holds token id {int(x.max())}: ids must be < vocab_size={vocab_size}"
        )


def load_text_classification(
    path: str | os.PathLike[str],
    *,
    name: str = "text",
    num_classes: int | None = None,
    vocab_size: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load a tokenised text classification data set from local arrays.

    Args:
        path: an ``.npz`` archive or a directory of ``.npy`` files (module docstring).
        name: the data set's name.
        num_classes: number of classes; if ``None``, the archive's
            ``num_classes`` scalar, else one more than the largest label.
        vocab_size: number of token ids; if ``None``, the archive's
            ``vocab_size`` scalar, else one more than the largest id.
        test_fraction: share held out when the files have no test split.
        seed: seed of that hold-out.

    Returns:
        A :class:`Dataset` with int32 ``(N, L)`` token ids, int32 labels and
        ``vocab_size`` set.

    Raises:
        UnusableInput: the path, a file or an array is missing or unreadable.
        InvalidArgument: an array has the wrong shape, dtype or values.
    """
    arrays = ArrayFile(path)
    for key, given in (("num_classes", num_classes), ("vocab_size", vocab_size)):
        stored = optional_scalar(arrays, key)
        if given is not None and stored is not None and stored != given:
            raise InvalidArgument(f"{arrays.where(key)}={stored} but {key}={given} was asked for")
        if key == "num_classes":
            num_classes = given if given is not None else stored
        else:
            vocab_size = given if given is not None else stored
    x_train = _tokens(arrays.where("x_train"), arrays.get("x_train"))
    y_train = check_labels(
        arrays.where("y_train"),
        arrays.get("y_train"),
        rows=x_train.shape[0],
        num_classes=num_classes,
    )
    test = arrays.get_pair("x_test", "y_test")
    if test is None:
        x_train, y_train, x_test, y_test = holdout_split(
            x_train, y_train, test_fraction=test_fraction, seed=seed
        )
    else:
        x_test = _tokens(arrays.where("x_test"), test[0])
        if x_test.shape[1] != x_train.shape[1]:
            raise InvalidArgument(
                f"{arrays.where('x_test')} has length {x_test.shape[1]} "
                f"but x_train has {x_train.shape[1]}: pad both to one length"
            )
        y_test = check_labels(
            arrays.where("y_test"), test[1], rows=x_test.shape[0], num_classes=num_classes
        )
    if vocab_size is None:
        vocab_size = int(max(x_train.max(initial=0), x_test.max(initial=0))) + 1
    _check_vocab(arrays.where("x_train"), x_train, vocab_size)
    _check_vocab(arrays.where("x_test"), x_test, vocab_size)
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(
        name, x_train, y_train, x_test, y_test, num_classes=num_classes, vocab_size=vocab_size
    )
