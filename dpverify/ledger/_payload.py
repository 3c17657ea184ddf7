"""Record payloads: record object ↔ bytes (layout in docs/ledger-format.md).

``RunHeader``, ``Checkpoint``, ``Resume`` and ``Seal`` payloads are canonical
JSON (UTF-8, sorted keys, no whitespace).  ``Step`` payloads are binary, since
there is one per training step: a fixed prefix, the optional fields present,
then the index block of :mod:`dpverify.ledger.codec`.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import struct
from typing import Any

import numpy as np

from dpverify.errors import InvalidArgument
from dpverify.ledger.codec import CodecError, decode_indices, encode_indices, encode_many
from dpverify.ledger.records import (
    CheckedIndices,
    Checkpoint,
    Record,
    Resume,
    RunHeader,
    Seal,
    Step,
)

__all__ = [
    "TYPE_CODES",
    "PayloadError",
    "decode_payload",
    "encode_payload",
    "encode_payloads",
    "make_step",
    "record_to_dict",
    "step_fields_and_block",
]

#: Record class → type byte of the framing.
TYPE_CODES: dict[type, int] = {RunHeader: 1, Step: 2, Checkpoint: 3, Resume: 4, Seal: 5}
_CLASS_OF_CODE: dict[int, Any] = {code: cls for cls, code in TYPE_CODES.items()}

_STEP_VERSION = 1
# Optional Step fields in flag-bit order; "d" float64, "Q" uint64, "s" sketch.
_STEP_OPTIONAL: tuple[tuple[str, str], ...] = (
    ("sampling_rate", "d"),
    ("clip_norm", "d"),
    ("noise_multiplier", "d"),
    ("noise_std", "d"),
    ("noise_draws", "Q"),
    ("num_clipped", "Q"),
    ("max_grad_norm", "d"),
    ("max_clipped_norm", "d"),
    ("denominator", "d"),
    ("physical_batches", "Q"),
    ("update_sketch", "s"),
)
# Optional Step fields added later: flag bits from len(_STEP_OPTIONAL) on, each
# encoded AFTER the sketch (so the layout of the fields above never moves).
_STEP_TRAILING: tuple[tuple[str, str], ...] = (("num_nonfinite", "Q"),)
_KNOWN_FLAGS = (1 << (len(_STEP_OPTIONAL) + len(_STEP_TRAILING))) - 1
_TRAILING_SHIFT = len(_STEP_OPTIONAL)
_TRAILING_MASK = _KNOWN_FLAGS & ~((1 << _TRAILING_SHIFT) - 1)
_PREFIX = struct.Struct("<BQH")  # version, step, flags
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class PayloadError(ValueError):
    """A payload cannot be decoded (the reader turns this into ``LedgerCorrupt``)."""


def record_to_dict(record: Record) -> dict[str, Any]:
    """A JSON-ready dict of a non-step record's fields (mappings as dicts)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if isinstance(value, dict) or hasattr(value, "items"):
            value = dict(value)
        out[field.name] = value
    return out


def _encode_json(record: Record) -> bytes:
    return json.dumps(
        record_to_dict(record), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


_SCALAR_NAMES = tuple(name for name, kind in _STEP_OPTIONAL if kind != "s")
_scalars_of = operator.attrgetter(*_SCALAR_NAMES)
_SKETCH_BIT = 1 << len(_SCALAR_NAMES)
_struct_cache: dict[int, struct.Struct] = {}


def _scalar_struct(flags: int) -> struct.Struct:
    """Struct for the prefix plus the scalar optional fields present in ``flags``."""
    cached = _struct_cache.get(flags)
    if cached is None:
        fmt = "<BQH" + "".join(
            kind for bit, (_, kind) in enumerate(_STEP_OPTIONAL[:-1]) if flags & (1 << bit)
        )
        cached = _struct_cache[flags] = struct.Struct(fmt)
    return cached


def _trailing(step: Step) -> tuple[int, bytes]:
    """Flag bits and bytes of the later optional fields present in ``step``."""
    flags, parts = 0, []
    for bit, (name, kind) in enumerate(_STEP_TRAILING, start=_TRAILING_SHIFT):
        value = getattr(step, name)
        if value is not None:
            flags |= 1 << bit
            parts.append(struct.pack("<" + kind, value))
    return flags, b"".join(parts)


def _encode_step(step: Step, block: bytes) -> bytes:
    values = _scalars_of(step)
    flags = 0
    present = []
    for bit, value in enumerate(values):
        if value is not None:
            flags |= 1 << bit
            present.append(value)
    late_flags, late = _trailing(step)
    flags |= late_flags
    sketch = step.update_sketch
    if sketch is None:
        head = _scalar_struct(flags & ~_TRAILING_MASK).pack(
            _STEP_VERSION, step.step, flags, *present
        )
        return b"".join((head, late, block))
    flags |= _SKETCH_BIT
    head = _scalar_struct(flags & ~_SKETCH_BIT & ~_TRAILING_MASK).pack(
        _STEP_VERSION, step.step, flags, *present
    )
    body = _U32.pack(len(sketch)) + np.asarray(sketch, dtype="<f8").tobytes()
    return b"".join((head, body, late, block))


def _type_code(record: Record) -> int:
    code = TYPE_CODES.get(type(record))
    if code is None:
        raise InvalidArgument(f"record={type(record).__name__} is not a ledger record type")
    return code


def encode_payload(record: Record) -> tuple[int, bytes]:
    """``(type_code, payload)`` of a record."""
    code = _type_code(record)
    if code == TYPE_CODES[Step]:
        assert isinstance(record, Step)
        return code, _encode_step(record, encode_indices(record.indices))
    return code, _encode_json(record)


def encode_payloads(records: list[Record]) -> list[tuple[int, bytes]]:
    """:func:`encode_payload` for many records, index blocks encoded in one batch."""
    steps = [r for r in records if isinstance(r, Step)]
    blocks = iter(encode_many([s.indices for s in steps], validated=True) if steps else ())
    out = []
    for record in records:
        code = _type_code(record)
        if code == TYPE_CODES[Step]:
            out.append((code, _encode_step(record, next(blocks))))  # type: ignore[arg-type]
        else:
            out.append((code, _encode_json(record)))
    return out


def step_fields_and_block(payload: bytes | memoryview) -> tuple[dict[str, Any], memoryview]:
    """Decode a Step payload's scalar fields; return them and the raw index block."""
    view = memoryview(payload)
    if len(view) < _PREFIX.size:
        raise PayloadError("step payload too short")
    version, step, flags = _PREFIX.unpack_from(view, 0)
    if version != _STEP_VERSION:
        raise PayloadError(f"unknown step payload version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise PayloadError(f"unknown step fields (flags {flags:#x})")
    early = flags & ~_SKETCH_BIT & ~_TRAILING_MASK
    layout = _scalar_struct(early)
    try:
        values = layout.unpack_from(view, 0)
        fields: dict[str, Any] = dict(zip(_names_of(early), values[3:], strict=True))
        fields["step"] = step
        pos = layout.size
        if flags & _SKETCH_BIT:
            (count,) = _U32.unpack_from(view, pos)
            pos += 4
            if pos + 8 * count > len(view):
                raise PayloadError("update_sketch runs past the payload")
            sketch = np.frombuffer(view, dtype="<f8", count=count, offset=pos)
            fields["update_sketch"] = tuple(sketch.tolist())
            pos += 8 * count
        for bit, (name, kind) in enumerate(_STEP_TRAILING, start=_TRAILING_SHIFT):
            if flags & (1 << bit):
                (fields[name],) = struct.unpack_from("<" + kind, view, pos)
                pos += struct.calcsize("<" + kind)
    except struct.error:
        raise PayloadError("step payload too short") from None
    return fields, view[pos:]


def _names_of(flags: int) -> tuple[str, ...]:
    names = _names_cache.get(flags)
    if names is None:
        names = _names_cache[flags] = tuple(
            name for bit, name in enumerate(_SCALAR_NAMES) if flags & (1 << bit)
        )
    return names


_names_cache: dict[int, tuple[str, ...]] = {}


def make_step(fields: dict[str, Any], indices: np.ndarray) -> Step:
    """Build a Step from decoded fields, as a :class:`PayloadError` if invalid.

    ``indices`` come from the codec, which only produces sorted, distinct,
    non-negative int64 arrays; Step skips re-checking them.
    """
    try:
        return Step(indices=indices.view(CheckedIndices), **fields)
    except InvalidArgument as exc:
        raise PayloadError(f"invalid step record: {exc}") from None


def decode_payload(code: int, payload: bytes | memoryview) -> Record:
    """Inverse of :func:`encode_payload`.

    Raises:
        PayloadError: unknown type code, malformed payload or invalid field values.
    """
    cls = _CLASS_OF_CODE.get(code)
    if cls is None:
        raise PayloadError(f"unknown record type {code}")
    if cls is Step:
        fields, block = step_fields_and_block(payload)
        try:
            indices = decode_indices(block)
        except CodecError as exc:
            raise PayloadError(f"bad index block: {exc}") from None
        return make_step(fields, indices)
    try:
        data = json.loads(bytes(payload).decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"{cls.TYPE} payload is not valid JSON: {exc.args[0]}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"{cls.TYPE} payload is not a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise PayloadError(f"{cls.TYPE} record has unknown fields {unknown}")
    try:
        return cls(**data)
    except (InvalidArgument, TypeError) as exc:
        raise PayloadError(f"invalid {cls.TYPE} record: {exc}") from None
