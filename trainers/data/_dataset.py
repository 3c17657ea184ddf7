"""The in-memory data set every trainer consumes."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from dpverify.errors import InvalidArgument

__all__ = ["Dataset", "fingerprint_arrays"]


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """SHA-256 hex digest of arrays' dtypes, shapes and bytes (a data set fingerprint)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set, split into train and held-out test parts.

    Attributes:
        name: short name (``"digits"``).
        x_train: inputs, float32 (images NHWC in [0, 1]) or int32 token ids (N, L).
        y_train: int32 labels in ``[0, num_classes)``.
        x_test, y_test: held-out split for evaluation (never sampled).
        num_classes: number of labels.
        vocab_size: for token inputs, the number of token ids (ids lie in
            ``[0, vocab_size)``, 0 is padding); ``None`` for images.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.shape[:1] != y.shape[:1]:
                raise InvalidArgument(
                    f"x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}"
                )
        if self.x_train.shape[0] < 1:
            raise InvalidArgument("x_train has 0 rows: the training split must not be empty")
        if isinstance(self.num_classes, bool) or int(self.num_classes) < 1:
            raise InvalidArgument(f"num_classes={self.num_classes!r} must be an integer >= 1")
        if self.vocab_size is not None and int(self.vocab_size) < 1:
            raise InvalidArgument(f"vocab_size={self.vocab_size!r} must be an integer >= 1")

    @property
    def size(self) -> int:
        """N, the number of training examples (what the sampler draws from)."""
        return int(self.x_train.shape[0])

    @property
    def fingerprint(self) -> str:
        """Digest of the training split (recorded in the ledger header)."""
        return fingerprint_arrays(self.x_train, self.y_train)
