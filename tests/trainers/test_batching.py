"""Tests for trainers.batching: logical batch → fixed-size physical batches + mask."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpverify.errors import InvalidArgument
from trainers.batching import num_physical_batches, split_physical_batches


@st.composite
def _batches(draw):
    n = draw(st.integers(1, 200))
    size = draw(st.integers(0, n))
    idx = np.sort(np.random.default_rng(draw(st.integers(0, 2**32 - 1))).choice(n, size, False))
    p = draw(st.integers(1, 40))
    return n, idx, p


@settings(max_examples=200, deadline=None)
@given(_batches())
def test_split_round_trips_and_has_fixed_shape(case):
    n, idx, p = case
    b = split_physical_batches(idx, p)
    L = idx.size
    assert b.indices.shape == b.mask.shape == (-(-L // p), p)
    assert b.count == num_physical_batches(L, p) == -(-L // p)
    assert b.indices.dtype == np.int32 and b.mask.dtype == bool
    assert b.batch_size == L == int(b.mask.sum())
    np.testing.assert_array_equal(b.indices[b.mask], idx)
    # Real rows first, padding only at the end of the last batch, with a valid index.
    flat_mask = b.mask.ravel()
    assert flat_mask[:L].all() and not flat_mask[L:].any()
    assert (b.indices >= 0).all() and (b.indices < n).all()
    if b.count:
        assert b.mask[:-1].all()
        assert b.mask[-1].any()
    rows = list(b)
    assert len(rows) == b.count and all(r[0].shape == (p,) for r in rows)


def test_empty_batch_gives_zero_physical_batches():
    b = split_physical_batches(np.array([], dtype=np.int64), 8)
    assert b.count == 0 and b.indices.shape == (0, 8) and b.batch_size == 0
    assert list(b) == []


def test_pad_index_is_used_for_padding_only():
    b = split_physical_batches(np.array([3, 5, 9]), 2, pad_index=7)
    np.testing.assert_array_equal(b.indices, [[3, 5], [9, 7]])
    np.testing.assert_array_equal(b.mask, [[True, True], [True, False]])
    default = split_physical_batches(np.array([3, 5, 9]), 2)
    assert default.indices[1, 1] == 3  # first sampled index: always valid


def test_repr_does_not_reveal_indices():
    b = split_physical_batches(np.array([12345, 67890]), 4)
    assert "12345" not in repr(b)


@pytest.mark.parametrize(
    "args",
    [
        (np.array([1, 2]), 0),
        (np.array([[1, 2]]), 2),
        (np.array([0.5]), 2),
        (np.array([-1, 2]), 2),
        (np.array([1, 2]), 1.5),
    ],
)
def test_invalid_arguments_raise(args):
    with pytest.raises(InvalidArgument):
        split_physical_batches(*args)


def test_invalid_pad_index_and_counts():
    with pytest.raises(InvalidArgument):
        split_physical_batches(np.array([1]), 2, pad_index=-1)
    with pytest.raises(InvalidArgument):
        num_physical_batches(-1, 2)
