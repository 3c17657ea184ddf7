"""LedgerWriter: sequencing, locking, resume, durability, file modes."""

from __future__ import annotations

import hashlib
import os
import stat
import time

import numpy as np
import pytest

from dpverify.errors import InvalidArgument, LedgerError, LedgerLocked
from dpverify.ledger import (
    Checkpoint,
    LedgerWriter,
    Resume,
    Seal,
    Step,
    read_ledger,
    verify_ledger,
)
from dpverify.ledger._framing import GENESIS, FrameScanner
from dpverify.ledger._payload import encode_payload


def _step(t, idx=(1, 2, 3)):
    return Step(step=t, indices=np.array(idx))


def test_create_append_seal_read(tmp_path, helpers):
    header = helpers.make_header()
    with LedgerWriter.create(tmp_path / "ledger", header) as w:
        for t in range(5):
            w.append(_step(t))
        w.close(seal=Seal(steps_executed=5, final_step=5))
    ledger = read_ledger(tmp_path)  # run dir is accepted too
    assert ledger.header == header
    assert [s.step for s in ledger.steps] == list(range(5))
    assert ledger.sealed and ledger.torn_tail_bytes == 0
    assert ledger.head == w.head


def test_head_is_the_documented_chain(tmp_path, helpers):
    """h_i = SHA-256(h_{i-1} ‖ type ‖ payload), h_{-1} = SHA-256(b"dpverify ledger v1")."""
    header = helpers.make_header()
    records = [header, _step(0), _step(1, (4,))]
    with LedgerWriter.create(tmp_path / "l", header) as w:
        for r in records[1:]:
            w.append(r)
    h = GENESIS
    assert GENESIS == hashlib.sha256(b"dpverify ledger v1").digest()
    for r in records:
        code, payload = encode_payload(r)
        h = hashlib.sha256(h + bytes([code]) + payload).digest()
    assert read_ledger(tmp_path / "l").head == h.hex() == w.head


def test_step_contiguity_enforced(tmp_path, helpers):
    with LedgerWriter.create(tmp_path / "l", helpers.make_header()) as w:
        with pytest.raises(InvalidArgument, match="expected step 0"):
            w.append(_step(1))
        w.append(_step(0))
        with pytest.raises(InvalidArgument, match="expected step 1"):
            w.append(_step(0))
        with pytest.raises(InvalidArgument, match="out of range"):
            w.append(_step(1, (5, 100)))  # dataset_size is 100
        with pytest.raises(InvalidArgument, match="cannot be appended"):
            w.append(Resume(step=0))
        with pytest.raises(InvalidArgument, match="write-ahead"):
            w.append(Checkpoint(step=5, digest="ab"))
        with pytest.raises(InvalidArgument, match="steps_executed"):
            w.close(seal=Seal(steps_executed=3, final_step=1))
        w.append(_step(1))
    assert len(read_ledger(tmp_path / "l").steps) == 2
    with pytest.raises(LedgerError, match="closed"):
        w.append(_step(2))


def test_create_refuses_existing(tmp_path, helpers):
    LedgerWriter.create(tmp_path / "l", helpers.make_header()).close()
    with pytest.raises(LedgerError, match="already exists"):
        LedgerWriter.create(tmp_path / "l", helpers.make_header())
    with pytest.raises(InvalidArgument):
        LedgerWriter.create(tmp_path / "m", helpers.make_header(), group_commit=0)


def test_two_writers_refused(tmp_path, helpers):
    w = LedgerWriter.create(tmp_path / "l", helpers.make_header())
    with pytest.raises(LedgerLocked):
        LedgerWriter.resume(tmp_path / "l", step=0)
    w.close()
    w2 = LedgerWriter.resume(tmp_path / "l", step=0)  # the lock is free again
    with pytest.raises(LedgerLocked):
        LedgerWriter.resume(tmp_path / "l", step=0)
    w2.close()


def test_resume_continues_the_chain(tmp_path, helpers):
    path = tmp_path / "l"
    with LedgerWriter.create(path, helpers.make_header()) as w:
        for t in range(3):
            w.append(_step(t))
    head_before = w.head
    with LedgerWriter.resume(path, step=1, checkpoint_digest="ab") as w:
        w.append(_step(1))
        with pytest.raises(InvalidArgument, match="expected step 2"):
            w.append(_step(3))
    ledger = read_ledger(path)
    assert [s.step for s in ledger.steps] == [0, 1, 2, 1]
    assert ledger.resumes == (Resume(step=1, checkpoint_digest="ab"),)
    # The chain continues: the prefix's head is the one the first writer ended with.
    assert verify_ledger(path).ok
    frames = list(FrameScanner(path / "records.log"))
    assert frames[3].chain.hex() == head_before
    code, payload = encode_payload(ledger.records[4])
    assert (
        frames[4].chain
        == hashlib.sha256(bytes.fromhex(head_before) + bytes([code]) + payload).digest()
    )
    with pytest.raises(InvalidArgument):
        LedgerWriter.resume(path, step=5)  # skips steps 2..4


def test_resume_refuses_sealed(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "l")
    with pytest.raises(LedgerError, match="sealed"):
        LedgerWriter.resume(path, step=0)


def test_group_commit_and_flush_durability(tmp_path, helpers):
    path = tmp_path / "l"
    w = LedgerWriter.create(path, helpers.make_header(), group_commit=4)
    for t in range(3):
        w.append(_step(t))
    assert len(read_ledger(path).steps) == 0  # buffered, not yet committed
    w.append(_step(3))  # group commit at 4 records, synced on a background thread
    deadline = time.monotonic() + 10
    while len(read_ledger(path).steps) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(read_ledger(path).steps) == 4
    w.append(_step(4))
    w.flush()
    assert len(read_ledger(path).steps) == 5
    w.append(_step(5))
    w.append(Checkpoint(step=6, digest="ab"))  # write-ahead: flushes first
    assert len(read_ledger(path).checkpoints) == 1
    w.close()


def test_files_are_private(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "l")
    names = sorted(os.listdir(path))
    assert names == ["heads", "lock", "manifest.json", "records.log"]
    for name in names:
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o600
