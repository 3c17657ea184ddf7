"""benchmarks/throughput.py runs end to end on a tiny configuration (API drift guard)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from trainers.xla_options import GHOST_CPU_OPTIONS

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("_throughput_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_tiny_run_reports_every_mode_and_ratio(throughput, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    argv = ["--models", "mlp", "--seconds", "0.05", "--min-trainer-steps", "3"]
    argv += ["--physical-batch-size", "4", "--expected-batch-size", "8", "--memory-batch", "4"]
    argv += ["--compare-tail", "--compare-xla-options", "--out", str(out)]
    assert throughput.main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    modes = [r["mode"] for r in records]
    assert modes == [
        "nonprivate",
        "dpsgd_vmap",
        "dpsgd_ghost",
        "dpsgd_ghost_xla_defaults",  # only ghost has per-compilation options (on XLA:CPU)
        "masked_trainer_vmap",
        "masked_trainer_ghost",
        "masked_trainer_vmap_no_tail",
        "masked_trainer_ghost_no_tail",
        "masked_trainer_vmap_xla_defaults",
        "masked_trainer_ghost_xla_defaults",
        "ratios",
    ]
    assert capsys.readouterr().out.count("\n") == len(modes)
    by = dict(zip(modes, records, strict=True))
    for m in ("vmap", "ghost"):
        masked = by[f"masked_trainer_{m}"]
        assert masked["compilations"] == 1 and masked["steps"] >= 3
        assert masked["physical_batch_size"] == 4 and masked["ledger_bytes"] > 0
        assert 0 <= by["ratios"][f"ledger_share_{m}"] < 1
        assert by["ratios"][f"dpsgd_{m}/nonprivate"] > 0
        assert (
            masked["tail_batch_size"] == 2
            and by[f"masked_trainer_{m}_no_tail"]["tail_batch_size"] == 0
        )
        assert by["ratios"][f"tail_gain_{m}"] > 0
        assert by[f"masked_trainer_{m}_xla_defaults"]["compiler_options"] == {}
        assert by["ratios"][f"xla_options_gain_{m}"] > 0
    assert by["masked_trainer_ghost"]["compiler_options"] == by["dpsgd_ghost"][
        "compiler_options"
    ] == dict(GHOST_CPU_OPTIONS)
    assert by["masked_trainer_vmap"]["compiler_options"] == by["dpsgd_vmap"]["compiler_options"] == {}
    assert by["dpsgd_ghost_xla_defaults"]["compiler_options"] == {}
    assert by["ratios"]["dpsgd_ghost_xla_defaults/nonprivate"] > 0
    assert all(r["examples_per_second"] > 0 for r in records[:-1])


def test_bad_arguments_exit_2(throughput, capsys):
    assert throughput.main(["--models", "resnet"]) == 2
    assert throughput.main(["--physical-batch-size", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 2
