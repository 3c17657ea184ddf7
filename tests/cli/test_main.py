"""The CLI dispatcher: one-line errors and interruption messages."""

import pytest

from dpverify.cli import main


def test_unknown_command_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1


def test_interrupted_training_tells_the_user_how_to_resume(monkeypatch, tmp_path, capsys):
    import trainers.loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainers.loop, "train", interrupted)
    code = main(["train", "--task", "digits-mlp", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130
    assert len(err) == 1 and "--resume" in err[0]


def test_interrupting_another_command_gives_no_resume_hint(monkeypatch, capsys):
    import dpverify.accounting as accounting

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(accounting, "compute_epsilon", interrupted)
    code = main(
        [
            "epsilon",
            "--sampling-rate",
            "0.01",
            "--noise-multiplier",
            "1",
            "--steps",
            "10",
            "--delta",
            "1e-5",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 130 and err == "dpverify: interrupted"
