"""``dpverify audit``: exit codes, one-line errors, JSON and report outputs."""

import json

import pytest

from dpverify.cli import main


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "/nonexistent/run"],
        ["audit", "{tmp}/empty"],  # a directory that is not a ledger
        ["audit", "{ledger}", "--alpha", "2"],
        ["audit", "{ledger}", "--alpha", "x"],
        ["audit", "{ledger}", "--replay-steps", "-1"],
        ["audit", "{ledger}", "--replay-steps", "3", "--no-replay"],
        ["audit", "{ledger}", "--report", "{tmp}/r.pdf"],
        ["audit", "{ledger}", "--json", "{tmp}/missing/c.json"],
        ["audit", "{ledger}", "--noise-key", "{tmp}/no.key"],
        ["audit", "{ledger}", "--max-groups", "0"],
        ["audit", "{ledger}", "--max-groups", "many"],
    ],
)
def test_unusable_input_is_one_line_and_exit_2(argv, tmp_path, fakes, capsys):
    ledger = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(3))
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, ledger=ledger) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors exit directly
        code = exc.code
    assert code == 2
    _one_line_error(capsys)


def test_corrupt_ledger_is_unverifiable_exit_1_with_certificate(tmp_path, fakes, capsys):
    ledger = fakes.write_ledger(tmp_path / "run" / "ledger", fakes.make_ledger(4))
    log = ledger / "records.log"
    data = bytearray(log.read_bytes())
    data[-60] ^= 1
    log.write_bytes(bytes(data))
    out = tmp_path / "cert.json"
    code = main(
        ["audit", str(tmp_path / "run"), "--json", str(out), "--report", str(tmp_path / "r.md")]
    )
    assert code == 1
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "unverifiable" and doc["checks"][0]["status"] == "fail"
    stdout = capsys.readouterr().out
    assert stdout.startswith("verdict: UNVERIFIABLE")
    assert (tmp_path / "r.md").read_text().count("Verdict: UNVERIFIABLE") == 1


def test_json_to_stdout(tmp_path, fakes, capsys):
    ledger = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(4))
    log = ledger / "records.log"
    log.write_bytes(log.read_bytes()[:-70])  # torn tail: the seal and part of a step
    heads = ledger / "heads"  # a crash tears only records never committed (ledger/heads)
    heads.write_text(heads.read_text().splitlines(keepends=True)[0])
    code = main(["audit", str(ledger), "--json", "-", "--quiet", "--no-replay"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "dpverify-certificate" and code == (doc["verdict"] != "certified")
    assert doc["checks"][0]["status"] == "warn" and not doc["sealed"]


def test_replay_steps_zero_means_no_replay_like_the_demo(tmp_path, fakes, capsys):
    """``--replay-steps 0`` is ``--no-replay`` (as in ``dpverify demo``); negative is exit 2."""
    ledger = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(3))

    def replay_check(*flags):
        main(["audit", str(ledger), "--json", "-", "--quiet", *flags])
        doc = json.loads(capsys.readouterr().out)
        return [c for c in doc["checks"] if c["name"] == "replay"]

    zero = replay_check("--replay-steps", "0")
    assert zero and zero == replay_check("--no-replay")
    assert main(["audit", str(ledger), "--replay-steps", "-1"]) == 2
    assert "0 skips replay" in _one_line_error(capsys)


def test_audit_says_where_it_wrote_the_certificate_and_report(tmp_path, fakes, capsys):
    ledger = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(3))
    cert, report = tmp_path / "c.json", tmp_path / "r.md"
    main(["audit", str(ledger), "--no-replay", "--json", str(cert), "--report", str(report)])
    out = capsys.readouterr().out
    assert f"certificate: {cert}" in out and f"report:      {report}" in out
    assert cert.is_file() and report.is_file()
    main(["audit", str(ledger), "--no-replay", "--json", "-", "--report", str(report)])
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays pure JSON
    assert f"report:      {report}" in captured.err


def test_a_named_noise_key_that_does_not_match_the_run_is_exit_2(tmp_path, fakes, capsys):
    """Regression: a wrong key file named with --noise-key used to end CERTIFIED
    with replay silently skipped."""
    import hashlib

    key = b"k" * 32
    header = fakes.make_header(noise_key_digest=hashlib.sha256(key).hexdigest())
    ledger = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(3, header=header))
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"x" * 32)
    assert main(["audit", str(ledger), "--noise-key", str(wrong), "--quiet"]) == 2
    assert "does not match the run" in _one_line_error(capsys)
    right = tmp_path / "right.key"
    right.write_bytes(key)
    # the right key passes the input check (replay of a bare ledger is then skipped)
    assert main(["audit", str(ledger), "--noise-key", str(right), "--quiet"]) != 2


def test_scope_is_printed_after_the_verdict_and_require_exits_1(tmp_path, fakes, capsys):
    """A bare ledger (no run directory) is certified for sampling and accounting only:
    the line after the verdict says clipping and noise were NOT verified, and
    ``--require replay`` turns that into exit 1."""
    ledger = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(30))
    assert main(["audit", str(ledger)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("verdict: CERTIFIED")
    assert lines[1].startswith("scope: CERTIFIED — sampling")
    assert "clipping and noise NOT verified (no replay)" in lines[1]
    assert main(["audit", str(ledger), "--quiet", "--require", "sampling"]) == 0
    assert main(["audit", str(ledger), "--quiet", "--require", "replay"]) == 1
    err = capsys.readouterr().err
    assert "--require replay: NOT verified" in err and "Traceback" not in err
    code = main(["audit", str(ledger), "--quiet", "--require", "mechanics", "--require", "replay"])
    assert code == 1
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(ledger), "--require", "everything"])
    assert exc.value.code == 2


def test_cli_constants_match_the_auditor():
    from audits.certificate import SCOPE_PARTS
    from audits.replay import DEFAULT_REPLAY_STEPS
    from dpverify.cli import _audit

    assert _audit._DEFAULT_REPLAY_STEPS == DEFAULT_REPLAY_STEPS
    assert set(_audit._SCOPE_PARTS) == set(SCOPE_PARTS)


def test_max_groups_reaches_the_accountant(tmp_path, fakes, capsys, monkeypatch):
    import audits.privacy

    ledger = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(3))
    seen = []
    real = audits.privacy.check_privacy

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_groups"))
        return real(*args, **kwargs)

    monkeypatch.setattr("audits.runner.check_privacy", spy)
    main(["audit", str(ledger), "--no-replay", "--quiet", "--max-groups", "7"])
    main(["audit", str(ledger), "--no-replay", "--quiet"])
    assert seen == [7, None]
    assert main(["audit", str(ledger), "--max-groups", "0"]) == 2
    assert "max_groups=0" in _one_line_error(capsys)
