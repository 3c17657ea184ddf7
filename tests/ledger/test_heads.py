"""The heads file: exported chain heads catch a rewritten or shortened chain."""

from __future__ import annotations

import shutil

import pytest

from dpverify.cli import main
from dpverify.errors import LedgerCorrupt, UnusableInput
from dpverify.ledger import LedgerWriter, read_ledger, verify_ledger


@pytest.fixture
def small(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "orig" / "ledger")
    return path, (path / "records.log").read_bytes(), (path / "heads").read_text()


def _counts(heads_text: str) -> list[int]:
    return [int(line.split()[0]) for line in heads_text.splitlines()]


def test_writer_exports_a_head_per_synchronous_commit(small):
    path, _, heads = small
    # create (1 record), checkpoint: flush before (5) and after (6), resume (7), seal (12)
    assert _counts(heads) == [1, 5, 6, 7, 12]
    ledger = read_ledger(path)
    assert heads.splitlines()[-1] == f"12 {ledger.head}"
    report = verify_ledger(path)
    assert report.ok and report.heads_checked == 5


def test_every_cut_below_an_exported_count_is_detected(small, tmp_path, helpers):
    path, data, heads = small
    ends = [end for _, end in helpers.frames(data)]
    work = tmp_path / "cut"
    shutil.copytree(path, work)
    lines = heads.splitlines(keepends=True)
    for cut in range(ends[0], len(data)):
        complete = sum(end <= cut for end in ends)
        (work / "records.log").write_bytes(data[:cut])
        (work / "heads").write_text(heads)
        report = verify_ledger(work)
        assert not report.ok and report.first_bad_record == complete, cut
        assert "commits to 12 records" in report.reason
        # an honest crash: the heads file holds only counts that were durable
        (work / "heads").write_text("".join(x for x in lines if int(x.split()[0]) <= complete))
        report = verify_ledger(work)
        assert report.ok and report.records == complete, (cut, report.reason)


def test_rewritten_chain_is_detected_at_the_first_differing_head(small, tmp_path, helpers):
    _, _, heads = small
    other = helpers.small_ledger(tmp_path / "other" / "ledger", seed=1)  # same header
    work = tmp_path / "forged"
    shutil.copytree(other, work)
    (work / "heads").write_text(heads)
    report = verify_ledger(work)
    assert not report.ok and report.first_bad_record == 4 and report.heads_checked == 1
    assert "after 5 records" in report.reason
    with pytest.raises(LedgerCorrupt) as info:
        read_ledger(work)
    assert info.value.record_index == 4


def test_a_copy_kept_elsewhere_can_be_checked(small, tmp_path, helpers, capsys):
    path, _, heads = small
    copy = tmp_path / "heads.copy"
    copy.write_text(heads)
    assert verify_ledger(path, heads=copy).heads_checked == 5
    forged = helpers.small_ledger(tmp_path / "forged" / "ledger", seed=1)
    assert verify_ledger(forged).ok  # its own heads file was forged along with it
    assert not verify_ledger(forged, heads=copy).ok
    with pytest.raises(UnusableInput):
        verify_ledger(path, heads=tmp_path / "missing")
    assert main(["ledger", "verify", str(forged), "--heads", str(copy), "--quiet"]) == 1
    assert "after 5 records" in capsys.readouterr().out
    assert main(["ledger", "verify", str(path), "--heads", str(copy), "--quiet"]) == 0
    assert "5 matched" in capsys.readouterr().out
    assert main(["ledger", "verify", str(path), "--heads", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such heads file" in err


def test_torn_and_malformed_lines(small, tmp_path):
    path, _, heads = small
    work = tmp_path / "w"
    shutil.copytree(path, work)
    (work / "heads").write_text(heads + "13 ab")  # torn last line: ignored
    assert verify_ledger(work).ok
    (work / "heads").write_text(heads + "13 xyz\n")
    report = verify_ledger(work)
    assert not report.ok and report.first_bad_record == 0 and "line 6" in report.reason
    (work / "heads").unlink()  # a ledger written before heads files existed
    report = verify_ledger(work)
    assert report.ok and report.heads_checked == 0


def test_resume_cuts_a_torn_line_and_keeps_exporting(tmp_path, helpers):
    import numpy as np

    path = tmp_path / "l"
    rng = np.random.default_rng(0)
    with LedgerWriter.create(path, helpers.make_header()) as w:
        w.append(helpers.make_step(0, rng))
    with open(path / "heads", "a") as f:
        f.write("9 0123")  # the writer died while exporting
    with LedgerWriter.resume(path, step=1) as w:
        w.append(helpers.make_step(1, rng))
    assert _counts((path / "heads").read_text()) == [1, 2, 3, 4]
    assert verify_ledger(path).heads_checked == 4
    (path / "heads").unlink()
    with LedgerWriter.resume(path, step=2) as w:  # recreated (0600) for an old ledger
        pass
    assert _counts((path / "heads").read_text()) == [5]
    assert (path / "heads").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("some notes\nabout the run\n", r"notes\.txt is not a heads file \(line 1"),
        ("", r"notes\.txt is not a heads file \(no complete"),
        (None, r"is a directory; pass the heads file itself"),
    ],
    ids=["text", "empty", "directory"],
)
def test_a_bad_heads_copy_is_bad_input_not_a_corrupt_ledger(small, tmp_path, capsys, content, message):
    """The file the user named is the bad input (exit 2); the ledger is not judged by it."""
    path, _, _ = small
    bad = tmp_path / "notes.txt"
    if content is None:
        bad.mkdir()
    else:
        bad.write_text(content)
    with pytest.raises(UnusableInput, match=message):
        verify_ledger(path, heads=bad)
    assert main(["ledger", "verify", str(path), "--heads", str(bad), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "CORRUPT" not in captured.out + captured.err
