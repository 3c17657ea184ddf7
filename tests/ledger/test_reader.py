"""Reading under damage: torn tails recover the prefix; any corruption is named."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dpverify.errors import LedgerCorrupt, LedgerLocked, UnusableInput
from dpverify.ledger import (
    LedgerWriter,
    iter_records,
    iter_steps,
    read_ledger,
    resolve_ledger_path,
    verify_ledger,
)


@pytest.fixture
def small(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "orig" / "ledger")
    data = (path / "records.log").read_bytes()
    return path, data, helpers.frames(data), read_ledger(path)


def _copy(path, tmp_path, name, data=None):
    dst = tmp_path / name
    shutil.copytree(path, dst)
    if data is not None:
        (dst / "records.log").write_bytes(data)
    return dst


def test_iterators_match_read(small):
    path, _, frames, ledger = small
    assert tuple(iter_records(path)) == ledger.records
    assert tuple(iter_steps(path.parent)) == ledger.steps
    assert len(ledger.records) == len(frames) == 12
    assert resolve_ledger_path(path.parent) == path


def test_truncation_at_every_offset_recovers_the_prefix(small, tmp_path):
    path, data, frames, ledger = small
    work = _copy(path, tmp_path, "cut")
    (work / "heads").unlink()  # the records file alone (heads: tests/ledger/test_heads.py)
    ends = [end for _, end in frames]
    for cut in range(len(data) + 1):
        (work / "records.log").write_bytes(data[:cut])
        if cut < ends[0]:  # the run header is written atomically: never torn
            with pytest.raises(LedgerCorrupt):
                read_ledger(work)
            assert not verify_ledger(work).ok
            continue
        complete = sum(end <= cut for end in ends)
        got = read_ledger(work)
        assert got.records == ledger.records[:complete]
        assert got.torn_tail_bytes == cut - ends[complete - 1]
        report = verify_ledger(work)
        assert report.ok and report.records == complete


def test_zero_filled_tail_is_a_torn_tail(small, tmp_path):
    path, data, _frames, ledger = small
    work = _copy(path, tmp_path, "zeros", data + bytes(100))
    got = read_ledger(work)
    assert got.records == ledger.records and got.torn_tail_bytes == 100


def test_every_single_byte_flip_is_detected(small, tmp_path):
    path, data, frames, _ = small
    work = _copy(path, tmp_path, "flip")
    starts = [start for start, _ in frames]
    for offset in range(len(data)):
        for mask in (0x01, 0xFF):
            damaged = bytearray(data)
            damaged[offset] ^= mask
            (work / "records.log").write_bytes(bytes(damaged))
            report = verify_ledger(work)
            assert not report.ok, (offset, mask)
            record = max([0] + [i for i, s in enumerate(starts) if s <= offset])
            assert report.first_bad_record == record, (offset, mask, report.reason)


def test_every_manifest_byte_flip_is_detected(small, tmp_path):
    path, _, _, _ = small
    manifest = (path / "manifest.json").read_bytes()
    work = _copy(path, tmp_path, "mflip")
    for offset in range(len(manifest)):
        damaged = bytearray(manifest)
        damaged[offset] ^= 0x01
        (work / "manifest.json").write_bytes(bytes(damaged))
        report = verify_ledger(work)
        assert not report.ok and report.first_bad_record == 0, offset


@pytest.mark.parametrize(
    ("name", "edit", "first_bad"),
    [
        ("drop", lambda f: f[:3] + f[4:], 3),
        ("duplicate", lambda f: [*f[:4], f[3], *f[4:]], 4),
        ("reorder", lambda f: [*f[:2], f[5], f[2], f[3], f[4], *f[6:]], 2),
        ("drop_header", lambda f: f[1:], 0),
    ],
)
def test_dropped_duplicated_reordered_records(small, tmp_path, name, edit, first_bad):
    path, data, frames, _ = small
    chunks = [data[s:e] for s, e in frames]
    work = _copy(path, tmp_path, name, data[:8] + b"".join(edit(chunks)))
    report = verify_ledger(work)
    assert not report.ok and report.first_bad_record == first_bad, report.reason
    with pytest.raises(LedgerCorrupt) as info:
        read_ledger(work)
    assert info.value.record_index == first_bad


def test_spliced_record_from_another_ledger(small, tmp_path, helpers):
    path, data, frames, _ = small
    other = helpers.small_ledger(tmp_path / "other" / "ledger", seed=1)
    odata = (other / "records.log").read_bytes()
    oframes = helpers.frames(odata)
    s, e = frames[5]
    os_, oe = oframes[5]
    work = _copy(path, tmp_path, "splice", data[:s] + odata[os_:oe] + data[e:])
    report = verify_ledger(work)
    assert not report.ok and report.first_bad_record == 5


def test_unusable_inputs(tmp_path):
    with pytest.raises(UnusableInput):
        read_ledger(tmp_path / "missing")
    with pytest.raises(UnusableInput):
        read_ledger(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnusableInput):
        verify_ledger(tmp_path / "file")


def test_missing_manifest_is_corruption(small, tmp_path):
    path, *_ = small
    work = _copy(path, tmp_path, "nomanifest")
    (work / "manifest.json").unlink()
    assert not verify_ledger(work).ok


_CHILD = textwrap.dedent(
    """
    import os, sys, numpy as np
    from dpverify.ledger import LedgerWriter, RunHeader, Step
    path, start = sys.argv[1], int(sys.argv[2])
    header = RunHeader(dataset_size=5000, sampler="poisson", sampling_rate=0.01,
                       noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    rng = np.random.default_rng(start)
    # (a writer killed before its first group commit left a ledger with no steps)
    w = (LedgerWriter.create(path, header, group_commit=8) if not os.path.exists(path)
         else LedgerWriter.resume(path, step=start, group_commit=8))
    print("ready", flush=True)
    t = start
    while True:
        w.append(Step(step=t, indices=np.flatnonzero(rng.random(5000) < 0.01)))
        t += 1
        print(t, flush=True)  # records appended so far: the parent kills at a chosen count
    """
)


def test_sigkill_mid_run_always_leaves_a_recoverable_prefix(tmp_path):
    """Kill a writer at random points of its record stream, five times; each
    time the ledger reads cleanly (maybe with a torn tail) and the next writer
    resumes it.  While the writer lives, a writer in another process is refused.

    The kill comes after a seeded-random number (16 to 199) of appends, counted
    from the child's output, not after a sleep: with group commits of 8 and at
    most one commit in flight, 16 appends guarantee the first 8 are durable,
    so every round makes progress whatever the machine's load."""
    path = tmp_path / "ledger"
    rng = np.random.default_rng(0)
    start = 0
    lengths = []
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(LedgerLocked):  # the live writer holds the lock
            LedgerWriter.resume(path, step=0)
        appended = int(rng.integers(16, 200))
        for line in child.stdout:
            if int(line) - start >= appended:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        ledger = read_ledger(path)  # never raises: at worst a torn tail
        assert verify_ledger(path).ok
        lengths.append(len(ledger.steps))
        start = ledger.steps[-1].step + 1 if ledger.steps else 0
    assert all(b > a for a, b in zip([0, *lengths], lengths, strict=False))
    with LedgerWriter.resume(path, step=start):
        pass
    final = read_ledger(path)
    assert final.torn_tail_bytes == 0 and len(final.resumes) == 5
    assert verify_ledger(path).heads_checked >= 6  # creation and each resume exported


def test_grammar_violation_inside_a_batch_names_its_record(tmp_path, helpers):
    """A well-chained ledger (hand-forged) whose step 2 is missing before a seal."""
    from dpverify.ledger._framing import GENESIS, MAGIC, chain_next, encode_frame
    from dpverify.ledger._payload import encode_payload
    from dpverify.ledger.records import Seal, Step

    path = helpers.small_ledger(tmp_path / "l")
    records = [read_ledger(path).header] + [
        Step(step=t, indices=np.array([1, 2])) for t in (0, 1, 3)
    ]
    records.append(Seal(steps_executed=3, final_step=4))
    data, chain = bytearray(MAGIC), GENESIS
    for record in records:
        code, payload = encode_payload(record)
        chain = chain_next(chain, code, payload)
        data += encode_frame(code, payload, chain)
    (path / "records.log").write_bytes(bytes(data))
    (path / "heads").unlink()
    report = verify_ledger(path)
    assert not report.ok and report.first_bad_record == 3, report.reason
    assert "step=3 out of sequence (expected step 2)" in report.reason


def test_unknown_record_type_is_corruption_not_skipped(tmp_path, helpers):
    """A well-framed, well-chained record of an unknown type (code 6) is an error."""
    from dpverify.ledger._framing import chain_next, encode_frame

    path = helpers.small_ledger(tmp_path / "l")
    data = (path / "records.log").read_bytes()
    frames = helpers.frames(data)
    cut = frames[3][1]  # after header and steps 0..2
    prev = data[cut - 36 : cut - 4]  # the chain value of record 3
    payload = b'{"step":3}'
    extra = encode_frame(6, payload, chain_next(prev, 6, payload))
    (path / "records.log").write_bytes(data[:cut] + extra + data[cut:])
    (path / "heads").unlink()
    report = verify_ledger(path)
    assert not report.ok and report.first_bad_record == 4
    assert "unknown record type 6" in report.reason
