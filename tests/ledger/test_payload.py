"""Record payloads: every record type round-trips, floats bit-exactly."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpverify.ledger._payload import PayloadError, decode_payload, encode_payload
from dpverify.ledger.records import Checkpoint, Resume, RunHeader, Seal, Step

floats_any = st.floats(allow_nan=True, allow_infinity=True, width=64)
floats_pos = st.floats(min_value=0.0, allow_infinity=True, width=64)
opt = st.none

STRANGE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF))[0]


def _bits(x):
    return None if x is None else struct.pack("<d", x)


@st.composite
def steps(draw):
    n = draw(st.integers(1, 500))
    q = draw(st.sampled_from([1e-4, 0.01, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    indices = np.flatnonzero(np.random.default_rng(seed).random(n) < q)
    return Step(
        step=draw(st.integers(0, 2**63 - 1)),
        indices=indices,
        sampling_rate=draw(opt() | st.floats(min_value=1e-9, max_value=1.0)),
        clip_norm=draw(opt() | floats_pos),
        noise_multiplier=draw(opt() | floats_pos),
        noise_std=draw(opt() | floats_pos),
        noise_draws=draw(opt() | st.integers(0, 2**64 - 1)),
        num_clipped=draw(opt() | st.integers(0, 2**64 - 1)),
        max_grad_norm=draw(opt() | floats_any | st.just(STRANGE_NAN)),
        max_clipped_norm=draw(opt() | floats_any),
        denominator=draw(opt() | floats_pos),
        physical_batches=draw(opt() | st.integers(0, 2**64 - 1)),
        update_sketch=draw(opt() | st.lists(floats_any, max_size=8).map(tuple)),
        num_nonfinite=draw(opt() | st.integers(0, 2**64 - 1)),
    )


@settings(max_examples=200, deadline=None)
@given(steps())
def test_step_round_trip_bit_exact(step):
    code, payload = encode_payload(step)
    back = decode_payload(code, payload)
    assert back == step
    np.testing.assert_array_equal(back.indices, step.indices)
    for name in ("max_grad_norm", "max_clipped_norm", "noise_std", "clip_norm", "denominator"):
        assert _bits(getattr(back, name)) == _bits(getattr(step, name))
    if step.update_sketch is not None:
        assert [_bits(v) for v in back.update_sketch] == [_bits(v) for v in step.update_sketch]


finite_pos = st.floats(min_value=0.0, max_value=1e300)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=5) | finite_pos,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        RunHeader,
        dataset_size=st.integers(1, 2**62),
        sampler=st.text(min_size=1, max_size=12),
        sampling_rate=st.floats(min_value=1e-12, max_value=1.0),
        noise_multiplier=finite_pos,
        clip_norm=st.floats(min_value=1e-9, max_value=1e9),
        delta=st.floats(min_value=1e-300, max_value=0.99),
        claimed_epsilon=st.none() | finite_pos | st.just(math.inf),
        neighbouring=st.sampled_from(["add_remove", "replace_one"]),
        sampler_params=st.dictionaries(st.text(max_size=6), json_value, max_size=3),
        extra=st.dictionaries(st.text(max_size=6), json_value, max_size=3),
        task=st.none() | st.text(max_size=10),
    )
)
def test_run_header_round_trip(header):
    assert decode_payload(*encode_payload(header)) == header


def test_empty_step_and_nan_payload():
    step = Step(step=0, indices=np.array([], dtype=np.int64), max_grad_norm=STRANGE_NAN)
    back = decode_payload(*encode_payload(step))
    assert back.batch_size == 0
    assert _bits(back.max_grad_norm) == _bits(STRANGE_NAN)


@pytest.mark.parametrize(
    "record",
    [
        RunHeader(
            dataset_size=1,
            sampler="truncated_poisson",
            sampler_params={"cap": 3},
            sampling_rate=1.0,
            noise_multiplier=0.0,
            clip_norm=0.1,
            delta=0.5,
            claimed_epsilon=math.inf,
            neighbouring="replace_one",
            software={"jax": "0.10"},
            extra={"nested": [1, {"a": None}]},
            run_id="r",
            created="2026-01-01T00:00:00Z",
        ),
        Checkpoint(step=3, digest="ff" * 32, path="checkpoints/3.npz"),
        Resume(step=0),
        Resume(step=7, checkpoint_digest="ab"),
        Seal(steps_executed=4, final_step=3, claimed_epsilon=1.5, delta=1e-6),
    ],
)
def test_json_records_round_trip(record):
    assert decode_payload(*encode_payload(record)) == record


def test_bad_payloads():
    code, payload = encode_payload(Resume(step=1))
    with pytest.raises(PayloadError, match="unknown record type"):
        decode_payload(99, payload)
    with pytest.raises(PayloadError, match="unknown fields"):
        decode_payload(code, b'{"step":1,"surprise":2}')
    with pytest.raises(PayloadError, match="not valid JSON"):
        decode_payload(code, b"{")
    with pytest.raises(PayloadError, match="invalid"):
        decode_payload(code, b'{"step":-1}')
    scode, spayload = encode_payload(Step(step=0, indices=np.array([1, 2])))
    with pytest.raises(PayloadError):
        decode_payload(scode, spayload[:5])
    with pytest.raises(PayloadError, match="version"):
        decode_payload(scode, b"\x09" + spayload[1:])
    with pytest.raises(PayloadError, match="unknown step fields"):
        decode_payload(scode, spayload[:9] + b"\x00\x80" + spayload[11:])


def test_later_field_keeps_earlier_layout():
    """num_nonfinite (flag bit 11) is written after the sketch: a step without it
    encodes exactly as before the field existed."""
    base = Step(step=3, indices=np.array([1, 5]), noise_std=1.5, update_sketch=(0.5, -1.0))
    with_field = Step(
        step=3, indices=np.array([1, 5]), noise_std=1.5, update_sketch=(0.5, -1.0), num_nonfinite=2
    )
    _, a = encode_payload(base)
    _, b = encode_payload(with_field)
    flags_a = struct.unpack_from("<H", a, 9)[0]
    flags_b = struct.unpack_from("<H", b, 9)[0]
    assert flags_b == flags_a | (1 << 11)
    assert decode_payload(2, b).num_nonfinite == 2 and decode_payload(2, a).num_nonfinite is None
