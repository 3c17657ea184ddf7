"""``dpverify epsilon`` / ``dpverify noise``: JSON shape, RUN_DIR, one-line errors."""

import json
import subprocess
import sys

import pytest

from dpverify.cli import main

PARAMS = [
    "--sampling-rate",
    "0.01",
    "--noise-multiplier",
    "1.1",
    "--steps",
    "300",
    "--delta",
    "1e-5",
]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_shape_exactly(capsys):
    code, out, err = run(["epsilon", *PARAMS, "--json"], capsys)
    assert code == 0 and err == ""
    obj = json.loads(out)
    assert set(obj) == {"rdp", "pld", "prv", "reasons"}
    assert set(obj["rdp"]) == {"epsilon", "order"}
    assert set(obj["pld"]) == {"epsilon"}
    assert set(obj["prv"]) == {"lower", "estimate", "upper"}
    assert (
        obj["prv"]["lower"] <= obj["pld"]["epsilon"] <= obj["prv"]["upper"] <= obj["rdp"]["epsilon"]
    )
    assert obj["reasons"] == {}


def test_single_accountant_and_nulls_have_reasons(capsys):
    code, out, _ = run(["epsilon", *PARAMS, "--json", "--accountant", "rdp"], capsys)
    obj = json.loads(out)
    assert code == 0 and obj["pld"] is None and obj["prv"] is None
    assert obj["reasons"]["pld"] and obj["reasons"]["prv"]
    code, out, _ = run(
        ["epsilon", *PARAMS, "--json", "--neighbouring", "replace_one", "--accountant", "rdp"],
        capsys,
    )
    obj = json.loads(out)
    assert obj["rdp"] is None and "replace_one" in obj["reasons"]["rdp"]


def test_text_output(capsys):
    code, out, _ = run(["epsilon", *PARAMS, "--accountant", "pld"], capsys)
    assert code == 0 and "PLD" in out and "RDP" not in out


def test_epochs_use_ceil(capsys):
    code, out, _ = run(
        [
            "epsilon",
            "--sampling-rate",
            "0.03",
            "--noise-multiplier",
            "1",
            "--epochs",
            "1",
            "--delta",
            "1e-5",
            "--accountant",
            "rdp",
        ],
        capsys,
    )
    assert code == 0 and "over 34 executed steps" in out


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--sampling-rate", "1.5"], "sampling_rate=1.5"),
        (["--sampling-rate", "0"], "sampling_rate=0.0"),
        (["--noise-multiplier", "0"], "noise_multiplier=0.0"),
        (["--noise-multiplier", "-1"], "noise_multiplier=-1.0"),
        (["--steps", "0"], "steps=0"),
        (["--delta", "0"], "delta=0.0"),
        (["--delta", "1"], "delta=1.0"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, field, capsys):
    args = dict(zip(PARAMS[::2], PARAMS[1::2], strict=True))
    args.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    code, out, err = run(["epsilon", *[x for kv in args.items() for x in kv]], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and field in err and "Traceback" not in err


def test_missing_parameters_and_mixing_with_run_dir(capsys, make_run):
    code, _, err = run(["epsilon", "--sampling-rate", "0.1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--noise-multiplier" in err
    code, _, err = run(["epsilon", str(make_run(steps=3)), "--steps", "5"], capsys)
    assert code == 2 and "RUN_DIR" in err


def test_run_dir_counts_repeats(capsys, make_run):
    run_dir = make_run(steps=20, resume_at=10, repeat_to=15)
    code, out, _ = run(["epsilon", str(run_dir), "--json", "--accountant", "rdp"], capsys)
    assert code == 0
    from dpverify.accounting import epsilon_poisson

    assert json.loads(out)["rdp"]["epsilon"] == pytest.approx(
        epsilon_poisson(0.01, 1.0, 25, 1e-5, "rdp")
    )
    code, out, _ = run(["epsilon", str(run_dir / "ledger"), "--accountant", "rdp"], capsys)
    assert code == 0 and "25 executed steps" in out


def test_missing_run_dir_is_exit_2(tmp_path, capsys):
    code, _, err = run(["epsilon", str(tmp_path / "nope")], capsys)
    assert code == 2 and err.count("\n") == 1


def test_noise_command(capsys):
    code, out, _ = run(
        [
            "noise",
            "--sampling-rate",
            "0.01",
            "--steps",
            "300",
            "--delta",
            "1e-5",
            "--target-epsilon",
            "3",
            "--accountant",
            "rdp",
            "--json",
        ],
        capsys,
    )
    obj = json.loads(out)
    assert code == 0 and obj["epsilon"] <= 3.0 and obj["noise_multiplier"] > 0
    code, _, err = run(
        [
            "noise",
            "--sampling-rate",
            "0.01",
            "--steps",
            "300",
            "--delta",
            "1e-5",
            "--target-epsilon",
            "-1",
        ],
        capsys,
    )
    assert code == 2 and "target_epsilon" in err


def test_console_script_exit_code():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpverify",
            "epsilon",
            "--sampling-rate",
            "2",
            "--noise-multiplier",
            "1",
            "--steps",
            "1",
            "--delta",
            "1e-5",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_shuffle_run_dir_shows_the_lower_bound(make_run, capsys):
    from dpverify.ledger import RunHeader

    header = RunHeader(
        dataset_size=1000,
        sampler="shuffle",
        sampler_params={"batch_size": 10},
        sampling_rate=0.01,
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=1e-5,
    )
    run_dir = make_run(steps=100, header=header)
    code, out, _ = run(["epsilon", str(run_dir)], capsys)
    assert code == 0 and "no accountant answered" in out and "ε ≥ 4.06" in out
    code, out, _ = run(["epsilon", str(run_dir), "--json"], capsys)
    obj = json.loads(out)
    assert obj["rdp"] is None and obj["pld"] is None and obj["prv"] is None
    assert set(obj["reasons"]) == {"rdp", "pld", "prv"}


def test_prv_failure_is_null_with_its_reason_on_the_cli(capsys):
    # prv-accountant raises "Discrete mean differs from continuous mean" at this setting.
    argv = ["--sampling-rate", "0.2", "--noise-multiplier", "0.3", "--steps", "100"]
    code, out, err = run(
        ["epsilon", *argv, "--delta", "1e-5", "--accountant", "prv", "--json"], capsys
    )
    obj = json.loads(out)
    assert code == 0 and err == ""
    assert obj["prv"] is None and "Discrete mean differs" in obj["reasons"]["prv"]


def test_tiny_noise_does_not_hang_the_cli(capsys):
    argv = ["--sampling-rate", "0.01", "--noise-multiplier", "0.02", "--steps", "1000"]
    code, out, _ = run(["epsilon", *argv, "--delta", "1e-5", "--json"], capsys)
    obj = json.loads(out)
    assert code == 0 and obj["rdp"]["epsilon"] > 1e5
    assert obj["pld"] is None and "not run" in obj["reasons"]["pld"]
    noise = ["noise", "--sampling-rate", "0.01", "--steps", "1000", "--delta", "1e-5"]
    code, _, err = run([*noise, "--target-epsilon", "1e6"], capsys)
    assert code == 2 and err.count("\n") == 1 and "use the RDP accountant" in err


def test_a_ledger_of_zero_steps_costs_nothing_in_text_and_json(tmp_path, capsys):
    """Regression: `epsilon RUN --json` on a 0-step ledger raised KeyError."""
    import json

    from dpverify.ledger import import_jsonl

    src = tmp_path / "run.jsonl"
    src.write_text(
        '{"type": "run", "dataset_size": 100, "sampler": "poisson", "sampling_rate": 0.01,'
        ' "noise_multiplier": 1.1, "clip_norm": 1.0, "delta": 1e-5, "claimed_epsilon": 2.0}\n'
    )
    import_jsonl(src, tmp_path / "run")
    assert main(["epsilon", str(tmp_path / "run"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prv"] == {"lower": 0.0, "estimate": 0.0, "upper": 0.0}
    assert out["rdp"]["epsilon"] == 0.0 and out["pld"]["epsilon"] == 0.0
    assert main(["epsilon", str(tmp_path / "run")]) == 0


def test_slow_tight_accounting_gives_a_hint_first(capsys, monkeypatch):
    """Issue 15.5: `epsilon` at 10⁷ steps or σ = 50 ran ~50 s silently; `noise` for 10 min."""
    from dpverify import accounting

    calls = []
    real = accounting.compute_epsilon

    def fake_compute(*args, **kwargs):
        calls.append(kwargs)
        return real(
            accounting.Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10),
            1e-5,
            accountants="rdp",
        )

    monkeypatch.setattr(accounting, "compute_epsilon", fake_compute)
    argv = ["--sampling-rate", "0.01", "--delta", "1e-5"]
    code, _, err = run(["epsilon", *argv, "--noise-multiplier", "1", "--steps", "10000000"], capsys)
    assert code == 0 and "can take a minute or more" in err and "--accountant rdp" in err
    assert callable(calls[-1]["progress"])  # each accountant is announced on a terminal
    code, _, err = run(["epsilon", *argv, "--noise-multiplier", "50", "--steps", "100"], capsys)
    assert code == 0 and "at σ = 50" in err
    code, _, err = run(
        ["epsilon", *argv, "--noise-multiplier", "1", "--steps", "10000000", "--accountant", "rdp"],
        capsys,
    )
    assert code == 0 and err == ""
    seen = []
    monkeypatch.setattr(
        accounting,
        "calibrate_noise_multiplier",
        lambda *a, progress=None, **k: (progress(1.5, 0.9), seen.append(a), 1.5)[-1],
    )
    monkeypatch.setattr(accounting, "epsilon_poisson", lambda *a, **k: 0.9)
    code, out, err = run(
        ["noise", *argv, "--steps", "100000000", "--target-epsilon", "1"], capsys
    )
    assert code == 0 and "can take a minute or more" in err and "σ = 1.5" in out


def test_calibration_reports_each_evaluation():
    from dpverify.accounting import calibrate_noise_multiplier

    seen = []
    sigma = calibrate_noise_multiplier(
        0.01, 100, 1e-5, 2.0, "rdp", progress=lambda s, e: seen.append((s, e))
    )
    assert seen and all(s > 0 and e > 0 for s, e in seen)
    assert min(abs(s - sigma) for s, _ in seen) <= 1e-2 * sigma  # it reports what it tries


def test_max_groups_and_the_rounding_note(capsys, make_run):
    overrides = {t: {"noise_multiplier": 1.0 + 0.05 * t} for t in range(6)}
    run_dir = make_run(steps=6, overrides=overrides)
    argv = ["epsilon", str(run_dir), "--accountant", "rdp"]
    code, out, _ = run([*argv, "--max-groups", "2"], capsys)
    assert code == 0 and "6 distinct (q, σ) pairs bracketed by 2 groups" in out
    assert "--max-groups" in out
    code, out, _ = run([*argv, "--max-groups", "6"], capsys)
    assert code == 0 and "bracketed" not in out
    code, _, err = run([*argv, "--max-groups", "0"], capsys)
    assert code == 2 and "max_groups=0" in err


def test_max_groups_is_validated_without_a_run_too(capsys):
    argv = ["epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "1", "--steps", "10"]
    code, _, err = run([*argv, "--delta", "1e-5", "--max-groups", "-3"], capsys)
    assert code == 2 and "max_groups=-3" in err and err.count("\n") == 1
    code, out, _ = run([*argv, "--delta", "1e-5", "--max-groups", "5", "--accountant", "rdp"], capsys)
    assert code == 0 and "RDP" in out
