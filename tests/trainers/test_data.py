"""Data loaders: round trips of small generated files, clear errors otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpverify.errors import InvalidArgument, UnusableInput
from trainers.data import (
    Dataset,
    load_cifar10,
    load_digits,
    load_image_arrays,
    load_text_classification,
)


def _write(tmp_path, arrays: dict, *, as_dir: bool = False, name: str = "data.npz"):
    """Write ``arrays`` as one .npz archive or as a directory of .npy files."""
    if as_dir:
        folder = tmp_path / "arrays"
        folder.mkdir()
        for key, value in arrays.items():
            np.save(folder / f"{key}.npy", value)
        return folder
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _images(n: int, shape=(32, 32, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


# --- digits ------------------------------------------------------------------


def test_digits_embedded():
    data = load_digits()
    assert data.x_train.shape[1:] == (8, 8, 1) and data.x_train.dtype == np.float32
    assert data.size + data.x_test.shape[0] == 1797
    assert data.num_classes == 10 and data.vocab_size is None
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.fingerprint == load_digits().fingerprint  # deterministic split


# --- images ------------------------------------------------------------------


@pytest.mark.parametrize("as_dir", [False, True])
def test_cifar10_round_trip(tmp_path, as_dir):
    x_tr, x_te = _images(6), _images(3, seed=1)
    y_tr = np.array([0, 1, 2, 3, 9, 5], np.uint8).reshape(-1, 1)  # Keras' (N, 1) layout
    y_te = np.array([4, 4, 7], np.int64)
    path = _write(
        tmp_path, {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}, as_dir=as_dir
    )
    data = load_cifar10(path)
    assert data.name == "cifar10" and data.num_classes == 10 and data.size == 6
    np.testing.assert_array_equal(data.x_train, x_tr.astype(np.float32) / 255)
    np.testing.assert_array_equal(data.x_test, x_te.astype(np.float32) / 255)
    assert data.y_train.dtype == np.int32 and data.y_train.tolist() == [0, 1, 2, 3, 9, 5]
    assert data.y_test.tolist() == [4, 4, 7]


def test_cifar10_flat_channel_major_rows(tmp_path):
    """The original python batches store each image as 1024 R, 1024 G, 1024 B values."""
    nhwc = _images(2)
    flat = nhwc.transpose(0, 3, 1, 2).reshape(2, 3072)
    path = _write(tmp_path, {"x_train": flat, "y_train": np.array([1, 2])})
    data = load_cifar10(path, test_fraction=0.5)
    both = np.concatenate([data.x_train, data.x_test])
    order = np.concatenate([data.y_train, data.y_test]).argsort()
    np.testing.assert_array_equal(both[order], nhwc.astype(np.float32) / 255)


def test_holdout_when_no_test_split_is_reproducible(tmp_path):
    x = _images(10, shape=(4, 4, 1))
    y = np.arange(10) % 3
    path = _write(tmp_path, {"x_train": x, "y_train": y})
    a, b = load_image_arrays(path), load_image_arrays(path)
    assert a.size == 8 and a.x_test.shape[0] == 2 and a.num_classes == 3
    assert a.fingerprint == b.fingerprint
    assert load_image_arrays(path, seed=1).fingerprint != a.fingerprint or a.size == 10


def test_greyscale_float_images_and_stored_num_classes(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 6, 6)).astype(np.float64)  # standardised
    path = _write(tmp_path, {"x_train": x, "y_train": np.zeros(5, np.int8), "num_classes": 4})
    data = load_image_arrays(path, test_fraction=0.4)
    assert data.x_train.shape == (3, 6, 6, 1) and data.x_train.dtype == np.float32
    assert data.num_classes == 4


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(2, 6),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 2, 3])),
    classes=st.integers(1, 5),
    as_dir=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_images_round_trip_property(tmp_path_factory, n, shape, classes, as_dir, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, classes, size=n)
    x_te, y_te = x[:1].copy(), y[:1].copy()
    tmp = tmp_path_factory.mktemp("img")
    path = _write(tmp, {"x_train": x, "y_train": y, "x_test": x_te, "y_test": y_te}, as_dir=as_dir)
    data = load_image_arrays(path, num_classes=classes)
    np.testing.assert_array_equal(data.x_train * 255, x.astype(np.float32))
    np.testing.assert_array_equal(data.y_train, y)
    assert data.x_test.shape == (1, *shape) and data.num_classes == classes


# --- text --------------------------------------------------------------------


@pytest.mark.parametrize("as_dir", [False, True])
def test_text_round_trip(tmp_path, as_dir):
    x = np.array([[5, 6, 7, 0], [1, 0, 0, 0], [2, 3, 4, 8]], np.int64)
    y = np.array([1, 0, 1])
    arrays = {"x_train": x, "y_train": y, "x_test": x[:1], "y_test": y[:1], "vocab_size": 100}
    data = load_text_classification(_write(tmp_path, arrays, as_dir=as_dir))
    assert data.x_train.dtype == np.int32
    np.testing.assert_array_equal(data.x_train, x)
    assert data.vocab_size == 100 and data.num_classes == 2


def test_text_infers_vocab_and_holds_out(tmp_path):
    x = np.random.default_rng(0).integers(0, 50, size=(20, 7))
    x[0, 0] = 49
    path = _write(tmp_path, {"x_train": x, "y_train": np.arange(20) % 4})
    data = load_text_classification(path)
    assert data.vocab_size == 50 and data.num_classes == 4
    assert data.size == 16 and data.x_test.shape == (4, 7)


# --- errors ------------------------------------------------------------------


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(UnusableInput, match=r"nowhere\.npz") as info:
        load_cifar10(missing)
    assert "does not exist" in _one_line(info.value)


def test_missing_key_in_archive_names_it(tmp_path):
    path = _write(tmp_path, {"x_train": _images(2)})
    with pytest.raises(UnusableInput, match="'y_train'") as info:
        load_cifar10(path)
    assert "x_train" in _one_line(info.value)  # lists what is there


def test_missing_npy_file_names_it(tmp_path):
    folder = _write(
        tmp_path, {"x_train": _images(2), "y_train": [0, 1], "x_test": _images(1)}, as_dir=True
    )
    with pytest.raises(UnusableInput, match=r"y_test\.npy") as info:
        load_cifar10(folder)
    _one_line(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a zip file at all", r"not a \.npz/\.npy array file"),
        (b"PK\x03\x04 a torn zip", "not a readable .npz"),
        (None, "single .npy array"),
    ],
)
def test_unreadable_files(tmp_path, content, match):
    if content is None:
        path = tmp_path / "x_train.npy"
        np.save(path, _images(1))
    else:
        path = tmp_path / "data.npz"
        path.write_bytes(content)
    with pytest.raises(UnusableInput, match=match) as info:
        load_image_arrays(path)
    _one_line(info.value)


def test_npy_content_under_another_name_is_refused(tmp_path):
    path = tmp_path / "data.bin"
    with path.open("wb") as f:
        np.save(f, _images(1))
    with pytest.raises(UnusableInput, match="single array") as info:
        load_image_arrays(path)
    _one_line(info.value)


def test_a_text_file_for_an_image_task_is_not_an_array_file(tmp_path):
    """Not numpy's "pickled (object) data ... allow_pickle" text: the file is no array file."""
    notes = tmp_path / "notes.txt"
    notes.write_text("some notes\nabout the data\n")
    with pytest.raises(UnusableInput, match=r"notes\.txt is not a \.npz/\.npy array file") as info:
        load_image_arrays(notes)
    assert "pickle" not in str(info.value)
    _one_line(info.value)
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "x_train.npy").write_text("text, not an array")
    np.save(folder / "y_train.npy", np.array([0]))
    with pytest.raises(UnusableInput, match=r"x_train\.npy is not a \.npy array file"):
        load_image_arrays(folder)


def test_object_arrays_are_refused(tmp_path):
    folder = tmp_path / "objs"
    folder.mkdir()
    np.save(folder / "x_train.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(folder / "y_train.npy", np.array([0]))
    with pytest.raises(UnusableInput, match=r"x_train\.npy holds Python objects") as info:
        load_image_arrays(folder)
    _one_line(info.value)


BAD_IMAGES = [
    ({"x_train": np.zeros((4, 10), np.uint8), "y_train": np.zeros(4, int)}, "shape \\(4, 10\\)"),
    ({"x_train": np.zeros((4, 3, 32, 32), np.uint8), "y_train": np.zeros(4, int)}, "NCHW"),
    ({"x_train": _images(4, (16, 16, 3)), "y_train": np.zeros(4, int)}, "expected \\(32, 32, 3\\)"),
    ({"x_train": _images(4), "y_train": np.zeros(3, int)}, "expected \\(4,\\) labels"),
    ({"x_train": _images(4), "y_train": np.zeros(4)}, "labels must be integers"),
    ({"x_train": _images(4), "y_train": np.array([0, 1, 10, 2])}, "label 10.*num_classes=10"),
    ({"x_train": _images(4), "y_train": np.array([0, -1, 1, 2])}, "label -1"),
    ({"x_train": _images(4).astype(np.int16), "y_train": np.zeros(4, int)}, "dtype int16"),
    (
        {"x_train": np.full((2, 32, 32, 3), np.nan, np.float32), "y_train": np.zeros(2, int)},
        "NaN",
    ),
    (
        {"x_train": _images(2), "y_train": [0, 1], "x_test": _images(1), "y_test": [0, 1]},
        "y_test.*expected \\(1,\\)",
    ),
    ({"x_train": _images(2), "y_train": [0, 1], "num_classes": 7}, "num_classes.*=7"),
]


@pytest.mark.parametrize(("arrays", "match"), BAD_IMAGES)
def test_bad_image_arrays_are_invalid_argument(tmp_path, arrays, match):
    with pytest.raises(InvalidArgument, match=match) as info:
        load_cifar10(_write(tmp_path, arrays))
    _one_line(info.value)


BAD_TEXT = [
    ({"x_train": np.zeros((3, 4), np.float32), "y_train": [0, 1, 0]}, "must be integers"),
    ({"x_train": np.zeros(3, int), "y_train": [0, 1, 0]}, "expected \\(N, L\\)"),
    ({"x_train": -np.ones((3, 4), int), "y_train": [0, 1, 0]}, "token id -1"),
    (
        {"x_train": np.full((3, 4), 12), "y_train": [0, 1, 0], "vocab_size": 10},
        "token id 12.*vocab_size=10",
    ),
    (
        {
            "x_train": np.ones((3, 4), int),
            "y_train": [0, 1, 0],
            "x_test": np.ones((1, 5), int),
            "y_test": [0],
        },
        "length 5",
    ),
]


@pytest.mark.parametrize(("arrays", "match"), BAD_TEXT)
def test_bad_text_arrays_are_invalid_argument(tmp_path, arrays, match):
    with pytest.raises(InvalidArgument, match=match) as info:
        load_text_classification(_write(tmp_path, arrays))
    _one_line(info.value)


def test_dataset_checks_row_counts():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(InvalidArgument, match="y_train has 2"):
        Dataset("d", x, np.zeros(2, np.int32), x, np.zeros(3, np.int32), num_classes=2)
