"""scikit-learn's digits: the embedded default data set (shipped, no download).

1 797 greyscale 8×8 images of handwritten digits, 10 classes.  We hold out a
fixed, stratified 20% as the test split.
"""

from __future__ import annotations

import numpy as np

from trainers.data._dataset import Dataset

__all__ = ["load_digits"]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Digits as NHWC float32 images in [0, 1] with int32 labels."""
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    raw = _sk_load_digits()
    x = (raw.images.astype(np.float32) / 16.0)[..., None]
    y = raw.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset("digits", x_tr, y_tr, x_te, y_te, num_classes=10)
