"""The index codec: exact round trips, batch == one-block, size near N·H(q)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpverify.errors import InvalidArgument
from dpverify.ledger.codec import (
    CODEC_BITMAP,
    CODEC_PACKED,
    CODEC_RICE,
    CodecError,
    decode_indices,
    decode_many,
    encode_indices,
    encode_many,
)


@st.composite
def index_sets(draw):
    """Poisson-like sets (any N ≥ 1, q from ~0 to 1) plus arbitrary sparse sets."""
    if draw(st.booleans()):
        n = draw(st.integers(1, 3000))
        q = draw(st.sampled_from([1e-6, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.999, 1.0]))
        seed = draw(st.integers(0, 2**32 - 1))
        x = np.flatnonzero(np.random.default_rng(seed).random(n) < q)
        # an offset exercises Rice blocks whose values approach 2^63
        return x + draw(st.sampled_from([0, 0, 0, 2**40, 2**62, 2**63 - 1 - n]))
    values = draw(st.lists(st.integers(0, 2**63 - 1), max_size=40, unique=True))
    return np.array(sorted(values), dtype=np.int64)


@settings(max_examples=300, deadline=None)
@given(index_sets())
def test_round_trip(x):
    block = encode_indices(x)
    out = decode_indices(block)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, x)


@settings(max_examples=60, deadline=None)
@given(st.lists(index_sets(), max_size=12))
def test_batch_equals_one_block(sets):
    blocks = encode_many(sets)
    assert blocks == [encode_indices(x) for x in sets]
    for out, x in zip(decode_many(blocks), sets, strict=True):
        np.testing.assert_array_equal(out, x)


def test_edge_cases():
    for x in ([], [0], [2**63 - 1], [0, 2**63 - 1], list(range(1000))):
        arr = np.array(x, dtype=np.int64)
        np.testing.assert_array_equal(decode_indices(encode_indices(arr)), arr)
    assert encode_indices(np.arange(1000))[0] in (CODEC_RICE, CODEC_BITMAP)
    assert encode_indices(np.array([0, 2**62]))[0] == CODEC_PACKED
    big = 2**62 + np.arange(1000)  # Rice with k = 52 and values past 2^62
    assert encode_indices(big)[0] == CODEC_RICE
    np.testing.assert_array_equal(decode_many([encode_indices(big)])[0], big)


def _entropy_bits(n: int, q: float) -> float:
    return n * -(q * math.log2(q) + (1 - q) * math.log2(1 - q))


@pytest.mark.parametrize(("n", "q"), [(60_000, 256 / 60_000), (1_000_000, 1e-3)])
def test_size_within_ten_percent_of_entropy(n, q):
    rng = np.random.default_rng(1)
    sets = [np.flatnonzero(rng.random(n) < q) for _ in range(50)]
    bits = np.mean([8 * len(b) for b in encode_many(sets)])
    assert bits <= 1.10 * _entropy_bits(n, q)
    assert bits >= 0.98 * _entropy_bits(n, q)  # a sanity bound: the entropy is a floor


def test_large_q_uses_bitmap_size():
    rng = np.random.default_rng(2)
    x = np.flatnonzero(rng.random(10_000) < 0.6)
    assert len(encode_indices(x)) <= 10_000 / 8 + 8


@pytest.mark.parametrize("bad", [[3, 3], [5, 2], [-1, 4]])
def test_encode_refuses_unsorted_repeated_negative(bad):
    with pytest.raises(InvalidArgument):
        encode_indices(np.array(bad))
    with pytest.raises(InvalidArgument):
        encode_many([np.array([1, 2]), np.array(bad)])


def test_malformed_blocks_raise_codec_error():
    good = encode_indices(np.flatnonzero(np.random.default_rng(3).random(5000) < 0.01))
    bad_blocks = [
        b"",
        b"\x09",
        b"\x00\x00",
        good[:-1],
        good + b"\x00",
        bytes([CODEC_RICE, 60]) + good[2:],
        bytes([CODEC_BITMAP, 10, 0xFF]),
        bytes([CODEC_PACKED, 0, 1, 0]),
    ]
    for block in bad_blocks:
        with pytest.raises(CodecError):
            decode_indices(block)
        with pytest.raises(CodecError):
            decode_many([good, block])


def test_many_in_cache_sized_chunks_equals_one_by_one(monkeypatch):
    """encode_many/decode_many work in chunks of about CHUNK_INDICES indices: same bytes."""
    import dpverify.ledger.codec as codec_module

    rng = np.random.default_rng(4)
    arrays = [np.flatnonzero(rng.random(3000) < q) for q in (0.01, 0.3, 0.0, 0.9, 0.05) * 7]
    whole = codec_module.encode_many(arrays)
    monkeypatch.setattr(codec_module, "CHUNK_INDICES", 50)  # many chunks, some of one array
    chunked = codec_module.encode_many(arrays)
    assert chunked == whole == [codec_module.encode_indices(a) for a in arrays]
    for got, want in zip(codec_module.decode_many(chunked), arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    assert codec_module._chunks([]) == []
    assert codec_module._chunks([60, 0, 10, 45, 5]) == [(0, 1), (1, 4), (4, 5)]
