"""`dpverify check-sampler`: exit 0 compliant, 1 not, 2 unusable; one-line errors."""

import json
import subprocess
import sys
import textwrap

import pytest

from dpverify.cli import main

CONFIG = ["--config", "2000,0.05,200"]


def test_builtin_poisson_is_compliant(capsys):
    assert main(["check-sampler", "poisson", *CONFIG]) == 0
    assert "is Poisson-compliant" in capsys.readouterr().out


def test_shortcut_is_not_compliant(capsys):
    assert main(["check-sampler", "dpverify.samplers:ShuffleSampler", *CONFIG]) == 1
    out = capsys.readouterr().out
    assert "NOT Poisson-compliant" in out and "fixed-size batches?" in out


def test_user_file_factory_and_json(tmp_path, capsys):
    src = tmp_path / "mysampler.py"
    src.write_text(
        textwrap.dedent(
            """
            import numpy as np

            class Coin:
                name, is_poisson, accounting = "coin", True, "poisson"

                def __init__(self, dataset_size, sampling_rate, seed):
                    self.dataset_size, self.sampling_rate, self.seed = dataset_size, sampling_rate, seed

                def params(self):
                    return {}

                def sample(self, step):
                    rng = np.random.default_rng([self.seed, step])
                    return np.flatnonzero(rng.random(self.dataset_size) < self.sampling_rate)
            """
        )
    )
    assert main(["check-sampler", f"{src}:Coin", *CONFIG, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["compliant"] is True and report["sampler"] == "coin"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["no_such_module_xyz:F"], "cannot import 'no_such_module_xyz'"),
        (["dpverify.samplers:Nope"], "has no attribute 'Nope'"),
        (["dpverify.samplers:SAMPLER_NAMES"], "is not callable"),
        (["bogus"], "must be MODULE:FACTORY"),
        (["poisson", "--config", "10,2,5"], "sampling_rate=2.0 must be in (0, 1]"),
        (["poisson", "--config", "10,x"], "must be N,q,T"),
        (["/no/such/file.py:F"], "no such file"),
    ],
)
def test_unusable_input_exits_2_with_one_line(args, words, capsys):
    assert main(["check-sampler", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_entry_point_exit_code():
    proc = subprocess.run(
        [sys.executable, "-m", "dpverify", "check-sampler", "fixed_size", *CONFIG, "--quiet"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stdout.strip() == "sampler 'fixed_size' is NOT Poisson-compliant (alpha=0.001)"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["truncated_poisson"], "needs its cap: pass --cap"),
        (["poisson", "--cap", "80"], "has no parameter 'cap'"),
    ],
)
def test_builtin_that_cannot_be_built_is_a_usage_error(argv, match, capsys):
    """Was exit 1 'NOT Poisson-compliant' under a functools.partial repr."""
    assert main(["check-sampler", *argv, *CONFIG]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
