"""``dpverify ledger ...``: exit codes 0/1/2; bad input is one stderr line and exit 2."""

from __future__ import annotations

import json

import pytest

from dpverify.cli import main


def _run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_show_export_import(tmp_path, helpers, capsys):
    path = helpers.small_ledger(tmp_path / "run" / "ledger")
    code, out, err = _run(capsys, "ledger", "verify", str(tmp_path / "run"))
    assert code == 0 and out.startswith("intact: 12 records, 8 steps, sealed") and err == ""
    code, out, _ = _run(capsys, "ledger", "verify", str(path), "--json")
    assert code == 0 and json.loads(out)["ok"] is True

    code, out, _ = _run(capsys, "ledger", "show", str(path))
    assert code == 0
    for needle in ("sampling_rate: 0.05", "steps:       8 executed", "batch size:", "resumes:     1",
                   "sealed:      yes", "head:"):  # fmt: skip
        assert needle in out
    assert "step 0:" not in out  # indices only on request
    code, out, _ = _run(capsys, "ledger", "show", str(path), "--indices")
    assert code == 0 and "step 0:" in out
    code, out, _ = _run(capsys, "ledger", "show", str(path), "--json")
    summary = json.loads(out)["summary"]
    assert summary["steps_executed"] == 8 and summary["resumes"] == [2]

    dst = tmp_path / "x.jsonl"
    code, out, _ = _run(capsys, "ledger", "export", str(path), "--out", str(dst))
    assert code == 0 and dst.exists()
    code, out, _ = _run(capsys, "ledger", "import", str(dst), "--out", str(tmp_path / "copy"))
    assert code == 0 and "imported 8 steps" in out


def test_verify_corrupt_exits_1(tmp_path, helpers, capsys):
    path = helpers.small_ledger(tmp_path / "l")
    data = bytearray((path / "records.log").read_bytes())
    data[200] ^= 1
    (path / "records.log").write_bytes(bytes(data))
    code, out, _ = _run(capsys, "ledger", "verify", str(path))
    assert code == 1 and out.startswith("CORRUPT at record")
    code, _, err = _run(capsys, "ledger", "show", str(path))
    assert code == 1 and len(err.splitlines()) == 1


def test_torn_tail_warns_but_exits_0(tmp_path, helpers, capsys):
    path = helpers.small_ledger(tmp_path / "l")
    with open(path / "records.log", "ab") as f:
        f.write(b"\x01\x02")
    code, _, err = _run(capsys, "ledger", "verify", str(path))
    assert code == 0 and "torn tail of 2 bytes" in err


def _bad_inputs(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"type": "step", "step": 0, "indices": [1]}\n')
    (tmp_path / "plain").mkdir()
    missing = str(tmp_path / "missing")
    return [
        ("ledger", "verify", missing),
        ("ledger", "verify", str(tmp_path / "plain")),
        ("ledger", "verify"),
        ("ledger", "show", missing),
        ("ledger", "show", str(tmp_path / "plain")),
        ("ledger", "show", str(tmp_path / "plain"), "--bogus"),
        ("ledger", "show", str(tmp_path / "plain"), "--indices", "--json"),
        ("ledger", "import", missing, "--out", str(tmp_path / "o")),
        ("ledger", "import", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")),
        ("ledger", "import", str(tmp_path / "bad.jsonl")),
        ("ledger", "export", missing, "--out", str(tmp_path / "e.jsonl")),
        ("ledger", "export", str(tmp_path / "plain"), "--out", str(tmp_path / "e.jsonl")),
        ("ledger",),
        ("ledger", "frobnicate"),
    ]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for argv in _bad_inputs(tmp_path):
        code, _out, err = _run(capsys, *argv)
        lines = [line for line in err.splitlines() if not line.startswith("usage:")]
        assert code == 2, argv
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)


def test_export_to_missing_directory_is_exit_2(tmp_path, helpers, capsys):
    path = helpers.small_ledger(tmp_path / "l")
    code, _, err = _run(
        capsys, "ledger", "export", str(path), "--out", str(tmp_path / "no/x.jsonl")
    )
    assert code == 2 and len(err.splitlines()) == 1


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_flags_accepted(tmp_path, helpers, capsys, flag):
    path = helpers.small_ledger(tmp_path / "l")
    assert _run(capsys, "ledger", "verify", str(path), flag)[0] == 0
