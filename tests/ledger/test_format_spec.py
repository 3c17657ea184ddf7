"""An independent reader written only from docs/ledger-format.md agrees with ours.

The reader below uses nothing from dpverify: plain bytes, struct, zlib, hashlib
and json, the way a reader in another language would be written.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import numpy as np

from dpverify.ledger import LedgerWriter, Step, encode_indices, read_ledger

OPTIONAL = [
    ("sampling_rate", "d"), ("clip_norm", "d"), ("noise_multiplier", "d"), ("noise_std", "d"),
    ("noise_draws", "Q"), ("num_clipped", "Q"), ("max_grad_norm", "d"),
    ("max_clipped_norm", "d"), ("denominator", "d"), ("physical_batches", "Q"),
]  # fmt: skip


def _varint(buf, pos):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _bits(data):
    return [(byte >> (7 - i)) & 1 for byte in data for i in range(8)]


def _fields(bits, count, width):
    out = []
    for j in range(count):
        value = 0
        for b in bits[j * width : (j + 1) * width]:
            value = 2 * value + b
        out.append(value)
    return out


def _indices(block):
    codec = block[0]
    if codec == 0:
        return []
    if codec == 2:
        universe, pos = _varint(block, 1)
        return [i for i, b in enumerate(_bits(block[pos:])[:universe]) if b]
    param = block[1]
    n, pos = _varint(block, 2)
    if codec == 3:
        gaps = _fields(_bits(block[pos:]), n, param)
    else:
        assert codec == 1
        low_bytes = (n * param + 7) // 8
        low = _fields(_bits(block[pos : pos + low_bytes]), n, param)
        high, run = [], 0
        for b in _bits(block[pos + low_bytes :]):
            if b:
                high.append(run)
                run = 0
            else:
                run += 1
        gaps = [(h << param) | lo for h, lo in zip(high[:n], low, strict=True)]
    out, x = [], -1
    for g in gaps:
        x += g + 1
        out.append(x)
    return out


def spec_reader(path):
    data = (path / "records.log").read_bytes()
    assert data[:8] == b"DPVLEDG\x01"
    h = hashlib.sha256(b"dpverify ledger v1").digest()
    pos, records = 8, []
    while pos < len(data):
        length, code, hcrc = struct.unpack_from("<IBI", data, pos)
        assert hcrc == zlib.crc32(data[pos : pos + 5])
        payload = data[pos + 9 : pos + 9 + length]
        chain = data[pos + 9 + length : pos + 9 + length + 32]
        (crc,) = struct.unpack_from("<I", data, pos + 9 + length + 32)
        assert crc == zlib.crc32(data[pos : pos + 9 + length + 32])
        h = hashlib.sha256(h + bytes([code]) + payload).digest()
        assert chain == h
        if code == 2:
            _, step, flags = struct.unpack_from("<BQH", payload, 0)
            p, rec = 11, {"type": "step", "step": step}
            for bit, (name, kind) in enumerate(OPTIONAL):
                if flags & (1 << bit):
                    (rec[name],) = struct.unpack_from("<" + kind, payload, p)
                    p += 8
            if flags & (1 << 10):
                (count,) = struct.unpack_from("<I", payload, p)
                rec["update_sketch"] = struct.unpack_from(f"<{count}d", payload, p + 4)
                p += 4 + 8 * count
            rec["indices"] = _indices(payload[p:])
        else:
            rec = {"type": {1: "run", 3: "checkpoint", 4: "resume", 5: "seal"}[code]}
            rec.update(json.loads(payload))
        records.append(rec)
        pos += 9 + length + 36
    return records, h.hex()


def test_spec_reader_agrees(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "l")
    records, head = spec_reader(path)
    ledger = read_ledger(path)
    assert head == ledger.head and len(records) == len(ledger.records)
    assert records[0]["dataset_size"] == ledger.header.dataset_size
    for rec, step in zip([r for r in records if r["type"] == "step"], ledger.steps, strict=True):
        assert rec["step"] == step.step and rec["indices"] == step.indices.tolist()
        assert rec.get("noise_std") == step.noise_std
        assert tuple(rec.get("update_sketch", ())) == (step.update_sketch or ())


def test_spec_reader_all_codecs(tmp_path, helpers):
    """Rice, bitmap, packed and empty blocks, decoded from the spec alone."""
    header = helpers.make_header(dataset_size=2**62 + 10)
    sets = [[], [5], list(range(0, 300, 2)), [0, 2**40, 2**62 + 3], [7, 100, 5000, 5001]]
    with LedgerWriter.create(tmp_path / "c", header) as w:
        for t, s in enumerate(sets):
            w.append(Step(step=t, indices=np.array(s, dtype=np.int64)))
    records, _ = spec_reader(tmp_path / "c")
    for rec, s in zip(records[1:], sets, strict=True):
        assert rec["indices"] == s
    codecs = {encode_indices(step.indices)[0] for step in read_ledger(tmp_path / "c").steps}
    assert codecs == {0, 1, 2, 3}
