"""benchmarks/recompilation.py: the paper-style step recompiles per k, ours once, same result.

Deterministic (fixed sampler seed 0): the first 4 Poisson batches at E = 8,
p = 4 on digits have k = ⌈L/p⌉ ∈ {1, 2}, so the paper-style step must trace
twice; the masked trainer must trace once; both must end with the same
parameters (float32 tolerance).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("benchmarks.test_recompilation")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "recompilation.py"


@pytest.fixture(scope="module")
def recompilation():
    spec = importlib.util.spec_from_file_location("_recompilation_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_paper_style_recompiles_ours_compiles_once_same_params(recompilation, tmp_path, capsys):
    out = tmp_path / "recomp.jsonl"
    argv = ["--models", "mlp", "--steps", "4", "--expected-batch-size", "8"]
    argv += ["--physical-batch-size", "4", "--out", str(out)]
    assert recompilation.main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert capsys.readouterr().out.count("\n") == 3
    paper, ours, cmp = records
    assert paper["implementation"] == "paper_style" and ours["implementation"] == "masked"
    assert cmp["distinct_k"] == 2
    assert paper["compilations"] == paper["jit_cache_entries"] == 2
    assert ours["compilations"] == 1
    # One dispatch per step: the fused function; the overflow path (L > K·p) unused.
    assert ours["jit_cache_entries"]["fused"] == 1
    assert set(ours["jit_cache_entries"].values()) <= {0, 1}
    assert cmp["compilations"] == {"paper_style": 2, "masked": 1}
    assert cmp["params_match"] is True and cmp["params_max_abs_diff"] < 1e-5
    assert paper["compile_seconds"] > 0 and ours["total_seconds"] > 0


def test_bad_size_is_refused(recompilation, capsys):
    assert recompilation.main(["--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
