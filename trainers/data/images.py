"""Image classification arrays from local files (CIFAR-10 and look-alikes).

Layout (``docs/data-formats.md``): an ``.npz`` archive, or a directory of
``.npy`` files, holding ``x_train`` and ``y_train`` and optionally ``x_test``
and ``y_test`` (both or neither) and an integer scalar ``num_classes``.

* Images are NHWC ``(N, H, W, C)`` or greyscale ``(N, H, W)``; ``uint8`` values
  are scaled from 0–255 to [0, 1], floating-point values are used as they are
  (they must be finite).  When the loader knows the image shape (CIFAR-10:
  32×32×3), flat rows ``(N, H·W·C)`` in the channel-major order of the original
  CIFAR-10 python batches (1024 red, 1024 green, 1024 blue values) are accepted
  too.
* Channels-first arrays ``(N, 1|3, S, S)`` with ``S > 4`` are refused with a
  hint to transpose (NHWC is the only image layout).
* Labels are integers in ``[0, num_classes)``, shape ``(N,)`` or ``(N, 1)``.
* Without a test split, a reproducible random ``test_fraction`` of the training
  arrays is held out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from dpverify.errors import InvalidArgument
from trainers.data._dataset import Dataset
from trainers.data._files import ArrayFile, check_labels, holdout_split, optional_scalar

__all__ = ["CIFAR10_SHAPE", "load_cifar10", "load_image_arrays"]

#: (H, W, C) of CIFAR-10 images.
CIFAR10_SHAPE = (32, 32, 3)


def _images(where: str, x: np.ndarray, image_shape: tuple[int, ...] | None) -> np.ndarray:
    """``x`` as float32 NHWC, checked."""
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise InvalidArgument(f"{where} holds NaN or infinite values")
    else:
        raise InvalidArgument(
            f"{where} has dtype {x.dtype}: images must be uint8 (0-255) or floating point"
        )
    if x.ndim == 2 and image_shape is not None and x.shape[1] == int(np.prod(image_shape)):
        h, w, c = image_shape
        x = x.reshape(x.shape[0], c, h, w).transpose(0, 2, 3, 1)
    elif x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise InvalidArgument(
            f"{where} has shape {x.shape}: expected (N, H, W, C) or (N, H, W) images"
        )
    if x.shape[1] in (1, 3) and x.shape[3] > 4 and x.shape[2] == x.shape[3]:
        raise InvalidArgument(
            f"{where} has shape {x.shape}: this looks channels-first (NCHW); "
            "transpose it to NHWC (N, H, W, C)"
        )
    if image_shape is not None and x.shape[1:] != tuple(image_shape):
        raise InvalidArgument(
            f"{where} has images of shape {x.shape[1:]}: expected {tuple(image_shape)}"
        )
    return np.ascontiguousarray(x)


def load_image_arrays(
    path: str | os.PathLike[str],
    *,
    name: str = "images",
    num_classes: int | None = None,
    image_shape: Sequence[int] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load an image classification data set from local arrays.

    Args:
        path: an ``.npz`` archive or a directory of ``.npy`` files (module docstring).
        name: the data set's name.
        num_classes: number of classes; if ``None``, the archive's
            ``num_classes`` scalar, else one more than the largest label.
        image_shape: required ``(H, W, C)``, or ``None`` to accept any.
        test_fraction: share held out when the files have no test split.
        seed: seed of that hold-out.

    Returns:
        A :class:`Dataset` of float32 NHWC images and int32 labels.

    Raises:
        UnusableInput: the path, a file or an array is missing or unreadable.
        InvalidArgument: an array has the wrong shape, dtype or values.
    """
    shape = None if image_shape is None else tuple(int(s) for s in image_shape)
    arrays = ArrayFile(path)
    stored = optional_scalar(arrays, "num_classes")
    if num_classes is not None and stored is not None and stored != num_classes:
        raise InvalidArgument(
            f"{arrays.where('num_classes')}={stored} but this loader expects {num_classes} classes"
        )
    num_classes = num_classes if num_classes is not None else stored
    x_train = _images(arrays.where("x_train"), arrays.get("x_train"), shape)
    y_raw = arrays.get("y_train")
    y_train = check_labels(
        arrays.where("y_train"), y_raw, rows=x_train.shape[0], num_classes=num_classes
    )
    test = arrays.get_pair("x_test", "y_test")
    if test is None:
        x_train, y_train, x_test, y_test = holdout_split(
            x_train, y_train, test_fraction=test_fraction, seed=seed
        )
    else:
        x_test = _images(arrays.where("x_test"), test[0], shape)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise InvalidArgument(
                f"{arrays.where('x_test')} has images of shape {x_test.shape[1:]} "
                f"but x_train has {x_train.shape[1:]}"
            )
        y_test = check_labels(
            arrays.where("y_test"), test[1], rows=x_test.shape[0], num_classes=num_classes
        )
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes=num_classes)


def load_cifar10(path: str | os.PathLike[str], **kwargs) -> Dataset:
    """CIFAR-10 (10 classes of 32×32×3 images) from local arrays; no download.

    Takes the layout of :func:`load_image_arrays` (NHWC ``uint8`` as produced
    by ``keras.datasets.cifar10.load_data()``, or the flat channel-major rows of
    the original python batches), with ``num_classes=10`` and 32×32×3 images
    required.  Keyword arguments are passed on (``test_fraction``, ``seed``).
    """
    return load_image_arrays(
        path, name="cifar10", num_classes=10, image_shape=CIFAR10_SHAPE, **kwargs
    )
