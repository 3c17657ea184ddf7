"""Reading and checking classification arrays from local ``.npz``/``.npy`` files.

The layout is documented in ``docs/data-formats.md``: a path is either one
``.npz`` archive holding named arrays, or a directory holding one ``KEY.npy``
file per array.  Arrays are loaded with ``allow_pickle=False`` (a data file
must never run code).  A missing file or key is :class:`UnusableInput` naming
it; a present array of the wrong shape, dtype or range is
:class:`InvalidArgument` naming the array, the file and what was expected.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from dpverify.errors import InvalidArgument, UnusableInput

__all__ = [
    "ArrayFile",
    "check_labels",
    "holdout_split",
    "optional_scalar",
]

_LAYOUT_HINT = "see docs/data-formats.md"
_ZIP_MAGIC = b"PK"  # an .npz archive is a zip file
_NPY_MAGIC = b"\x93NUMPY"


def _magic(path: Path) -> bytes | None:
    """The first bytes of ``path`` (``None`` if it cannot be read: np.load says why)."""
    try:
        with path.open("rb") as f:
            return f.read(len(_NPY_MAGIC))
    except OSError:
        return None


class ArrayFile:
    """Named arrays from an ``.npz`` archive or a directory of ``.npy`` files.

    Args:
        path: the archive or directory.

    Raises:
        UnusableInput: ``path`` is missing, or is neither a directory nor a
            readable ``.npz`` archive.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._archive: dict[str, np.ndarray] | None = None
        if not self.path.exists():
            raise UnusableInput(f"data path {self.path} does not exist ({_LAYOUT_HINT})")
        if self.path.is_dir():
            return
        if self.path.suffix == ".npy":
            raise UnusableInput(
                f"{self.path} is a single .npy array; give its directory or an .npz archive "
                f"({_LAYOUT_HINT})"
            )
        magic = _magic(self.path)
        if magic is not None and not magic.startswith((_ZIP_MAGIC, _NPY_MAGIC)):
            raise UnusableInput(f"{self.path} is not a .npz/.npy array file ({_LAYOUT_HINT})")
        try:
            loaded = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise UnusableInput(f"{self.path} is not a readable .npz archive: {exc}") from None
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UnusableInput(
                f"{self.path} holds a single array, not an .npz archive ({_LAYOUT_HINT})"
            )
        try:
            with loaded:
                self._archive = {k: loaded[k] for k in loaded.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise UnusableInput(f"{self.path} is not a readable .npz archive: {exc}") from None

    def where(self, key: str) -> str:
        """Where ``key`` lives, for messages (``archive.npz['x_train']`` or ``dir/x_train.npy``)."""
        if self._archive is not None:
            return f"{self.path}[{key!r}]"
        return str(self.path / f"{key}.npy")

    def has(self, key: str) -> bool:
        """Whether the array ``key`` is present."""
        if self._archive is not None:
            return key in self._archive
        return (self.path / f"{key}.npy").is_file()

    def get(self, key: str) -> np.ndarray:
        """The array ``key``.

        Raises:
            UnusableInput: the key (or its ``.npy`` file) is missing or unreadable.
        """
        if self._archive is not None:
            if key not in self._archive:
                present = ", ".join(sorted(self._archive)) or "none"
                raise UnusableInput(
                    f"{self.path} has no array {key!r} (arrays present: {present}; {_LAYOUT_HINT})"
                )
            return self._archive[key]
        file = self.path / f"{key}.npy"
        if not file.is_file():
            raise UnusableInput(f"{file} is missing ({_LAYOUT_HINT})")
        magic = _magic(file)
        if magic is not None and not magic.startswith(_NPY_MAGIC):
            raise UnusableInput(f"{file} is not a .npy array file ({_LAYOUT_HINT})")
        try:
            return np.load(file, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc):  # an object array: never unpickled (it could run code)
                raise UnusableInput(
                    f"{file} holds Python objects (pickled data), which are never loaded; "
                    f"save numeric arrays ({_LAYOUT_HINT})"
                ) from None
            raise UnusableInput(f"{file} is not a readable .npy array: {exc}") from None
        except (OSError, EOFError) as exc:
            raise UnusableInput(f"{file} is not a readable .npy array: {exc}") from None

    def get_pair(self, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Both arrays, or ``None`` when both are absent; one without the other is an error."""
        has_x, has_y = self.has(x_key), self.has(y_key)
        if not has_x and not has_y:
            return None
        if has_x != has_y:
            missing = y_key if has_x else x_key
            present = x_key if has_x else y_key
            raise UnusableInput(
                f"{self.where(missing)} is missing but {present} is present "
                f"(give both or neither; {_LAYOUT_HINT})"
            )
        return self.get(x_key), self.get(y_key)


def optional_scalar(arrays: ArrayFile, key: str, *, minimum: int = 1) -> int | None:
    """An optional integer scalar array ``key`` (e.g. ``num_classes``), checked ``>= minimum``."""
    if not arrays.has(key):
        return None
    value = arrays.get(key)
    if value.shape not in ((), (1,)) or not np.issubdtype(value.dtype, np.integer):
        raise InvalidArgument(
            f"{arrays.where(key)} must be an integer scalar, got shape {value.shape} {value.dtype}"
        )
    out = int(value.reshape(()))
    if out < minimum:
        raise InvalidArgument(f"{arrays.where(key)}={out} must be >= {minimum}")
    return out


def check_labels(where: str, y: np.ndarray, *, rows: int, num_classes: int | None) -> np.ndarray:
    """Labels as int32 ``(N,)``; ``(N, 1)`` is accepted (Keras' CIFAR layout).

    Args:
        where: the array's location, for messages.
        y: the labels.
        rows: N, the number of inputs they label.
        num_classes: labels must lie in ``[0, num_classes)``; ``None`` skips
            the upper bound.

    Raises:
        InvalidArgument: wrong shape or dtype, or a label out of range.
    """
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != rows:
        raise InvalidArgument(f"{where} has shape {y.shape}: expected ({rows},) labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise InvalidArgument(f"{where} has dtype {y.dtype}: labels must be integers")
    if y.size:
        low, high = int(y.min()), int(y.max())
        if low < 0:
            raise InvalidArgument(f"{where} holds label {low}: labels must be >= 0")
        if num_classes is not None and high >= num_classes:
            raise InvalidArgument(
                f"{where} holds label {high}: labels must be < num_classes={num_classes}"
            )
    return y.astype(np.int32)


def holdout_split(
    x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A reproducible random hold-out: ``(x_train, y_train, x_test, y_test)``.

    ``round(test_fraction·N)`` examples (at least one, and leaving at least one
    for training) go to the test split, chosen by a permutation seeded with
    ``seed``.
    """
    n = x.shape[0]
    if not 0.0 < test_fraction < 1.0:
        raise InvalidArgument(f"test_fraction={test_fraction!r} must be in (0, 1)")
    if n < 2:
        raise InvalidArgument(f"{n} example(s) cannot be split into train and test parts")
    n_test = min(max(1, round(test_fraction * n)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return x[train], y[train], x[test], y[test]
