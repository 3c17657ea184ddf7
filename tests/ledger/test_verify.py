"""verify_ledger: a report, never an exception, for damaged ledgers."""

from __future__ import annotations

from dpverify.ledger import LedgerWriter, Step, verify_ledger


def test_report_of_an_intact_sealed_ledger(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "l")
    report = verify_ledger(path)
    assert report.ok and report.sealed and report.reason == ""
    assert (report.records, report.steps, report.torn_tail_bytes) == (12, 8, 0)
    assert report.first_bad_record is None and len(report.head) == 64
    assert report.to_dict()["head"] == report.head


def test_report_of_an_unsealed_torn_ledger(tmp_path, helpers):
    import numpy as np

    path = tmp_path / "l"
    with LedgerWriter.create(path, helpers.make_header()) as w:
        w.append(Step(step=0, indices=np.array([1])))
    with open(path / "records.log", "ab") as f:
        f.write(b"\x10\x00\x00")
    report = verify_ledger(path)
    assert report.ok and not report.sealed and report.torn_tail_bytes == 3


def test_report_of_a_corrupt_ledger_names_the_record(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "l")
    data = bytearray((path / "records.log").read_bytes())
    start, _end = helpers.frames(bytes(data))[7]
    data[start + 20] ^= 0x40
    (path / "records.log").write_bytes(bytes(data))
    report = verify_ledger(path)
    assert not report.ok and report.first_bad_record == 7
    assert report.records == 7 and "record 7" in report.reason
