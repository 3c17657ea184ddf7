"""Bad output/input paths are one line on stderr and exit 2, never an internal error.

Each case here used to end in ``dpverify: internal error`` (exit 3) or print a
second stderr line; found by QA on the CLI.
"""

import json

import pytest

from dpverify.cli import main

RUN = {
    "type": "run",
    "dataset_size": 1000,
    "sampler": "poisson",
    "sampling_rate": 0.01,
    "noise_multiplier": 1.1,
    "clip_norm": 1.0,
    "delta": 1e-5,
    "claimed_epsilon": 2.0,
    "neighbouring": "add_remove",
}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("flag", ["--json", "--report"])
def test_audit_output_that_is_a_directory(tmp_path, capsys, flag):
    out = tmp_path / "out.html"
    out.mkdir()
    assert main(["audit", str(tmp_path / "run"), flag, str(out)]) == 2
    assert "is a directory" in _one_error_line(capsys)
    assert not (tmp_path / "out.html.tmp").exists()  # nothing written beside it


def test_audit_noise_key_that_is_a_directory(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "run"), "--noise-key", str(tmp_path)]) == 2
    assert "is a directory" in _one_error_line(capsys)


def test_ledger_import_into_a_file(tmp_path, capsys):
    src = tmp_path / "run.jsonl"
    src.write_text(json.dumps(RUN) + "\n")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(["ledger", "import", str(src), "--out", str(a_file)]) == 2
    assert "is a file" in _one_error_line(capsys)


def test_demo_out_that_is_a_file_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(["demo", "--out", str(a_file), "--quiet"]) == 2
    assert "is a file, not a run directory" in _one_error_line(capsys)


def test_epsilon_of_a_ledger_without_steps(tmp_path, capsys):
    src = tmp_path / "run.jsonl"
    src.write_text(json.dumps(RUN) + "\n")
    assert main(["ledger", "import", str(src), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["epsilon", str(tmp_path / "run"), "--accountant", "prv"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "PRV upper  0" in captured.out


def test_ledger_export_to_dash_is_refused(tmp_path, capsys, monkeypatch):
    """``--out -`` used to write a private file literally named '-'."""
    src = tmp_path / "run.jsonl"
    src.write_text(json.dumps(RUN) + "\n")
    assert main(["ledger", "import", str(src), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["ledger", "export", str(tmp_path / "run"), "--out", "-"]) == 2
    assert "not supported" in _one_error_line(capsys)
    assert not (tmp_path / "-").exists()


def test_ledger_export_onto_an_existing_file_names_the_force_flag(tmp_path, capsys):
    src = tmp_path / "run.jsonl"
    src.write_text(json.dumps(RUN) + "\n")
    assert main(["ledger", "import", str(src), "--out", str(tmp_path / "run")]) == 0
    target = tmp_path / "out.jsonl"
    target.write_text("keep me")
    capsys.readouterr()
    assert main(["ledger", "export", str(tmp_path / "run"), "--out", str(target)]) == 2
    err = _one_error_line(capsys)
    assert "already exists; pass --force to replace it" in err and "overwrite" not in err
    assert target.read_text() == "keep me"
    assert main(["ledger", "export", str(tmp_path / "run"), "--out", str(target), "--force"]) == 0
