"""The streaming pass equals brute force on the full inclusion matrix, for any chunking."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpverify.errors import InvalidArgument
from dpverify.stats._stream import BatchStream


def _brute(matrix, max_lag):
    steps, n = matrix.shape
    lag = [0] + [int((matrix[k:] & matrix[:-k]).sum()) for k in range(1, max_lag + 1)]
    gaps = np.zeros(max(steps, 1), dtype=np.int64)
    for i in range(n):
        for g in np.diff(np.flatnonzero(matrix[:, i])):
            gaps[g] += 1
    adjacent = int((matrix[:, 1:] & matrix[:, :-1]).sum())
    rows = [r.tobytes() for r in matrix]
    repeated = sum(rows[a] == rows[b] for a in range(steps) for b in range(a))
    return lag, gaps, adjacent, repeated


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    steps=st.integers(0, 60),
    q=st.floats(0.0, 1.0),
    max_lag=st.integers(1, 12),
    chunk=st.integers(1, 200),
    seed=st.integers(0, 2**32),
)
def test_stream_matches_brute_force(n, steps, q, max_lag, chunk, seed):
    rng = np.random.default_rng(seed)
    matrix = rng.random((steps, n)) < q
    stream = BatchStream(n, max_lag=max_lag, chunk_indices=chunk)
    for row in matrix:
        stream.add(np.flatnonzero(row))
    s = stream.finish()
    lag, gaps, adjacent, repeated = _brute(matrix, max_lag)
    assert s.steps == steps
    assert np.array_equal(s.sizes, matrix.sum(axis=1))
    assert np.array_equal(s.counts, matrix.sum(axis=0))
    assert list(s.lag_overlap) == lag
    padded = np.zeros(max(steps, s.gap_hist.size), dtype=np.int64)
    padded[: s.gap_hist.size] = s.gap_hist
    assert np.array_equal(padded[: gaps.size], gaps) and not padded[gaps.size :].any()
    assert s.adjacent_pairs == adjacent
    assert s.repeated_pairs == repeated


def test_wide_index_space_uses_64_bit_keys():
    """N = 2^21 with 3000 steps in one chunk does not fit 32-bit packed keys."""
    n, steps = 2**21, 3000
    rng = np.random.default_rng(0)
    pool = rng.choice(n, size=40, replace=False)  # few distinct examples: many overlaps
    batches = [np.unique(rng.choice(pool, size=5)) for _ in range(steps)]
    stream = BatchStream(n, max_lag=3, chunk_indices=10**6)
    for b in batches:
        stream.add(b)
    s = stream.finish()
    sets = [set(b.tolist()) for b in batches]
    for k in (1, 2, 3):
        assert s.lag_overlap[k] == sum(len(sets[t] & sets[t - k]) for t in range(k, steps))


def test_rejects_two_dimensional_batches():
    stream = BatchStream(10)
    with pytest.raises(InvalidArgument, match="1-D integer array"):
        stream.add(np.zeros((2, 2), dtype=np.int64))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    steps=st.integers(0, 40),
    q=st.floats(0.0, 1.0),
    chunk=st.integers(1, 50),
    seed=st.integers(0, 2**32),
)
def test_sparse_state_equals_dense_state(n, steps, q, chunk, seed):
    """Per-example state kept for seen examples only gives the same summary as dense arrays."""
    rng = np.random.default_rng(seed)
    matrix = rng.random((steps, n)) < q
    out = []
    for sparse in (False, True):
        stream = BatchStream(n, max_lag=4, chunk_indices=chunk, sparse=sparse)
        for row in matrix:
            stream.add(np.flatnonzero(row))
        out.append(stream.finish())
    dense, sparse = out
    assert np.array_equal(dense.seen, sparse.seen)
    assert np.array_equal(dense.seen_counts, sparse.seen_counts)
    assert np.array_equal(dense.seen_last, sparse.seen_last)
    assert np.array_equal(dense.gap_hist, sparse.gap_hist)
    assert np.array_equal(dense.hashes, sparse.hashes)
    assert np.array_equal(sparse.counts, matrix.sum(axis=0))
    last = [int(np.flatnonzero(matrix[:, i]).max()) for i in dense.seen]
    assert list(dense.seen_last) == last


def test_repeats_are_counted_by_step_class_and_size():
    stream = BatchStream(10)
    for b in ([1, 2], [1, 2], [], [1, 2], [], [3]):
        stream.add(np.array(b, dtype=np.int64))
    s = stream.finish()
    assert s.repeated_pairs == 3 + 1
    assert s.repeats_by_class(1) == {(0, 0): (2, 1), (0, 1): (1, 0), (0, 2): (3, 3)}
    assert s.repeats_by_class(2) == {(0, 0): (2, 1), (0, 2): (1, 0), (1, 1): (1, 0), (1, 2): (2, 1)}


def test_a_billion_examples_need_no_per_example_arrays():
    """N = 10⁹, q = 10⁻⁸, 2000 steps: the battery allocates megabytes, not gigabytes."""
    import tracemalloc

    from dpverify.stats import run_battery

    n, q = 10**9, 1e-8
    rng = np.random.default_rng(0)
    batches = [np.unique(rng.integers(0, n, size=rng.binomial(n, q))) for _ in range(2000)]
    tracemalloc.start()
    try:
        res = run_battery(batches, dataset_size=n, sampling_rate=q)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200e6, peak
    assert res.passed, res.explain()


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 50),
    steps=st.integers(0, 150),
    q=st.floats(0.0, 1.0),
    max_lag=st.sampled_from([1, 2, 5, 31, 63, 64]),
    chunk=st.integers(1, 300),
    seed=st.integers(0, 2**32),
)
def test_masked_path_equals_sorting_path(n, steps, q, max_lag, chunk, seed):
    """The sort-free dense path (recent-inclusion masks) gives the same summary, bit for bit."""
    rng = np.random.default_rng(seed)
    matrix = rng.random((steps, n)) < q
    out = []
    for masked in (True, False):
        stream = BatchStream(n, max_lag=max_lag, chunk_indices=chunk, masked=masked)
        for row in matrix:
            stream.add(np.flatnonzero(row))
        out.append(stream.finish())
    a, b = out
    for name in ("sizes", "seen", "seen_counts", "seen_last", "lag_overlap", "hashes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    size = max(a.gap_hist.size, b.gap_hist.size)
    assert np.array_equal(np.pad(a.gap_hist, (0, size - a.gap_hist.size)),
                          np.pad(b.gap_hist, (0, size - b.gap_hist.size)))  # fmt: skip
    assert a.adjacent_pairs == b.adjacent_pairs


def test_masked_path_needs_dense_state_and_a_short_window():
    with pytest.raises(InvalidArgument, match="masked=True"):
        BatchStream(10, max_lag=65, masked=True)
    with pytest.raises(InvalidArgument, match="masked=True"):
        BatchStream(10, max_lag=4, sparse=True, masked=True)


@pytest.fixture(scope="module")
def helper():
    from dpverify._masked_helper import RangeHelper

    h = RangeHelper()
    yield h
    h.shutdown()


def _summaries_equal(a, b):
    for name in ("sizes", "seen", "seen_counts", "seen_last", "lag_overlap", "hashes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    size = max(a.gap_hist.size, b.gap_hist.size)
    assert np.array_equal(np.pad(a.gap_hist, (0, size - a.gap_hist.size)),
                          np.pad(b.gap_hist, (0, size - b.gap_hist.size)))  # fmt: skip
    assert a.adjacent_pairs == b.adjacent_pairs


@pytest.mark.parametrize(
    ("n", "steps", "q", "max_lag", "chunk"),
    [(3000, 300, 0.02, 64, 500), (200, 120, 0.3, 5, 64), (50, 80, 0.9, 64, 7), (5000, 40, 0.001, 64, 1)],
)
def test_helper_process_gives_the_same_summary(helper, n, steps, q, max_lag, chunk):
    """Examples split between this process and the helper: the summary is bit for bit the one-process one
    (empty steps and batches wholly on one side of the split included)."""
    rng = np.random.default_rng(n + steps)
    batches = [np.flatnonzero(rng.random(n) < q) for _ in range(steps)]
    batches[3] = np.zeros(0, dtype=np.int64)
    batches[5] = np.arange(min(3, n))  # all below the split
    out = []
    for h in (None, helper):
        stream = BatchStream(n, max_lag=max_lag, chunk_indices=chunk, helper=h)
        for b in batches:
            stream.add(b)
        out.append(stream.finish())
        if h is not None:
            assert stream._split < n  # the helper took part
    _summaries_equal(*out)


def test_a_killed_helper_is_a_clear_error_not_a_hang():
    from dpverify._masked_helper import HelperError, RangeHelper

    h = RangeHelper()
    stream = BatchStream(1000, max_lag=64, chunk_indices=10, helper=h)
    rng = np.random.default_rng(0)
    for _ in range(5):
        stream.add(np.flatnonzero(rng.random(1000) < 0.1))
    assert h.running
    h._proc.kill()
    h._proc.wait()
    with pytest.raises(HelperError, match="stopped unexpectedly"):
        for _ in range(50):
            stream.add(np.flatnonzero(rng.random(1000) < 0.1))
        stream.finish()


def test_an_error_in_the_helper_is_reported_with_its_message():
    from dpverify._masked_helper import HelperError, RangeHelper

    h = RangeHelper()
    h.open(10, 5, 64, np.uint64(1))
    h.steps(np.array([7], dtype=np.int32), np.array([1], dtype=np.int32), 0)  # index outside the range
    with pytest.raises(HelperError, match="IndexError"):
        h.close()
    assert not h.running


def test_bit_positions_count_every_bit():
    from dpverify._masked import bit_positions

    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**63, 500, dtype=np.uint64) | (rng.integers(0, 2, 500, dtype=np.uint64) << np.uint64(63))
    words[::7] = 0
    brute = [int(((words >> np.uint64(j)) & np.uint64(1)).sum()) for j in range(64)]
    assert list(bit_positions(words, 64)) == brute
    assert list(bit_positions(words, 10)) == brute[:10]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 300),
    steps=st.integers(0, 80),
    q=st.floats(0.0, 1.0),
    max_lag=st.sampled_from([1, 3, 17, 63, 64]),
    chunk=st.integers(1, 40),
    seed=st.integers(0, 2**32),
)
def test_compiled_loop_equals_numpy_loop(n, steps, q, max_lag, chunk, seed):
    """The numba loop (example blocks, de Bruijn bit positions) and the numpy loop agree bit for bit."""
    from dpverify import _masked

    if _masked.compiled_steps() is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(seed)
    batches = [np.flatnonzero(rng.random(n) < q) for _ in range(steps)]
    out = []
    for compiled in (True, False):
        r = _masked.MaskedRange(0, n, max_lag, np.uint64(seed))
        r.compiled = compiled
        for a in range(0, steps, chunk):
            part = batches[a : a + chunk]
            sizes = np.array([b.size for b in part], dtype=np.int64)
            r.steps(np.concatenate(part) if part else np.zeros(0, np.int64), sizes, a)
        out.append(r.result())
    for x, y in zip(*out, strict=True):
        assert np.array_equal(x, y)


def test_compiled_loop_refuses_unsorted_or_out_of_range_batches():
    from dpverify import _masked

    if _masked.compiled_steps() is None:
        pytest.skip("numba is not installed")
    r = _masked.MaskedRange(0, 10, 64, np.uint64(1))
    with pytest.raises(IndexError):
        r.steps(np.array([5, 3]), np.array([2]), 0)
    with pytest.raises(IndexError):
        r.steps(np.array([3, 10]), np.array([2]), 0)
