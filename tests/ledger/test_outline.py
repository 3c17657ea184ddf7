"""The one-pass outline: the same records as read_ledger, index arrays re-read and re-verified."""

from __future__ import annotations

import numpy as np
import pytest

from dpverify.errors import LedgerCorrupt
from dpverify.ledger import Step, read_ledger
from dpverify.ledger.outline import LazyIndices, read_outline


def test_outline_has_the_records_of_read_ledger(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "ledger")
    whole = read_ledger(path)
    seen = []
    outline = read_outline(path, on_record=seen.append)
    assert seen == list(whole.records)  # every record, indices included, in order
    assert outline.head == whole.head and outline.torn_tail_bytes == whole.torn_tail_bytes
    assert len(outline.records) == len(whole.records)
    assert [type(r) for r in outline.records] == [type(r) for r in whole.records]
    assert outline.resumes == whole.resumes and outline.checkpoints == whole.checkpoints
    assert outline.seal == whole.seal
    for light, full in zip(outline.steps, whole.steps, strict=True):
        assert isinstance(light.indices, LazyIndices)
        assert light.batch_size == full.batch_size and len(light.indices) == full.indices.size
        if full.indices.size:
            assert light.indices[-1] == full.indices[-1]
        assert np.array_equal(np.asarray(light.indices), full.indices)
        assert np.array_equal(light.indices[:2], full.indices[:2])
        assert light.indices.tolist() == full.indices.tolist()
        assert light == full  # Step equality compares the re-read arrays
        assert (light.step, light.noise_std, light.update_sketch) == (
            full.step, full.noise_std, full.update_sketch,
        )  # fmt: skip
    assert "indices=" not in repr(outline.steps[0]) and "[" not in repr(outline.steps[0].indices)


def test_re_read_array_is_checked_against_the_chain(tmp_path, helpers):
    """A file changed after the pass cannot hand other indices to a later reader (e.g. replay)."""
    path = helpers.small_ledger(tmp_path / "ledger")
    outline = read_outline(path)
    log = path / "records.log"
    data = bytearray(log.read_bytes())
    start, _ = helpers.frames(bytes(data))[2]  # header, step 0, step 1
    data[start + 9 + 20] ^= 0x01
    log.write_bytes(bytes(data))
    step1 = outline.steps[1]
    assert isinstance(step1, Step)
    with pytest.raises(LedgerCorrupt, match="changed after it was verified"):
        np.asarray(step1.indices)
    np.asarray(outline.steps[0].indices)  # the records around it still read


def test_outline_of_a_corrupt_ledger_raises_like_read_ledger(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "ledger")
    log = path / "records.log"
    data = bytearray(log.read_bytes())
    start, _ = helpers.frames(bytes(data))[3]
    data[start + 9 + 3] ^= 0x40
    log.write_bytes(bytes(data))
    with pytest.raises(LedgerCorrupt) as whole:
        read_ledger(path)
    with pytest.raises(LedgerCorrupt) as outlined:
        read_outline(path)
    assert outlined.value.record_index == whole.value.record_index == 3
