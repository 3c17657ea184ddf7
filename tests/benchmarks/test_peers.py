"""benchmarks/peers.py runs end to end in --quick mode (schema and the model copies)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("benchmarks.test_peers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    pytest.importorskip("opacus")
    spec = importlib.util.spec_from_file_location("_peers_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_quick_run_reports_every_mode_and_ratio(peers, tmp_path, capsys):
    out = tmp_path / "peers.jsonl"
    argv = ["--quick", "--threads", "1", "--models", "cnn", "--out", str(out)]
    assert peers.main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert capsys.readouterr().out.count("\n") == len(records)
    modes = [r["mode"] for r in records]
    opacus = [f"opacus_{g}_{k}" for g in ("hooks", "ghost", "functorch")
              for k in ("logical", "physical")]  # fmt: skip
    plain = ["nonprivate_jax_b4", "nonprivate_jax_b8", "nonprivate_torch_b8"]  # p = 4, E = 8
    assert modes == [*opacus, *plain, "ours_vmap", "ours_ghost", "worker_done", "ratios"]
    by = dict(zip(modes, records, strict=True))
    for mode in (*opacus, "ours_vmap", "ours_ghost"):
        row = by[mode]
        assert row["threads"] == 1 and row["cpu_affinity"] and len(row["cpu_affinity"]) == 1
        assert row["examples_per_second"] > 0 and row["examples"] > 0
        # the PyTorch copy is the same model: same parameter count, same logits
        assert row["params_torch"] == row["params_ours"] > 0
        assert row["max_logit_difference"] < 1e-4
    assert "--xla_cpu_multi_thread_eigen=false" in by["ours_vmap"]["xla_flags"]
    for m in ("vmap", "ghost"):
        assert by[f"ours_{m}"]["clipping"] == m and by[f"ours_{m}"]["compilations"] == 1
    ratios = by["ratios"]
    best = max(opacus, key=lambda m: by[m]["examples_per_second"])
    assert ratios["opacus_best_mode"] == best
    ours = max(("ours_vmap", "ours_ghost"), key=lambda m: by[m]["examples_per_second"])
    expected = by[ours]["examples_per_second"] / by[best]["examples_per_second"]
    assert ratios["ours_best/opacus_best"] == pytest.approx(expected)
    assert by["worker_done"]["max_rss_bytes"] > 0
    # the non-private ceiling is reported, never counted as one of ours or Opacus's modes
    for mode in plain:
        assert by[mode]["examples_per_second"] > 0 and by[mode]["examples"] > 0
    jax_best = max(plain[:2], key=lambda m: by[m]["examples_per_second"])
    assert ratios["nonprivate_jax_best_mode"] == jax_best
    ceiling = by[jax_best]["examples_per_second"] / by[best]["examples_per_second"]
    assert ratios["nonprivate_jax_best/opacus_best"] == pytest.approx(ceiling)
    assert ratios["ours_best/nonprivate_jax_best"] == pytest.approx(
        by[ours]["examples_per_second"] / by[jax_best]["examples_per_second"]
    )


def test_bad_arguments_exit_2(peers, capsys):
    assert peers.main(["--models", "resnet"]) == 2
    assert peers.main(["--threads", "0"]) == 2
    assert peers.main(["--opacus-modes", "ew"]) == 2
    assert capsys.readouterr().err.count("\n") == 3

