"""``pip install dpverify`` without extras: the auditor works and neither JAX nor torch is there.

The wheel is built from this checkout and installed (``--no-deps``, offline)
into a fresh ``python -m venv``.  Its core requirements — read from the
wheel's own metadata, with their transitive requirements — are made
importable from this machine's site-packages through a ``.pth`` file of
links, and nothing else is: so the venv holds exactly what ``pip install
dpverify`` would install, without downloading anything.  Then ``dpverify
ledger import`` + ``dpverify audit`` of a JSON Lines run must work (replay
skipped with its reason) and ``import jax`` / ``import torch`` must fail.
"""

from __future__ import annotations

import email
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"jax", "jaxlib", "flax", "optax", "torch", "opacus", "jax-privacy", "scikit-learn"}

# One worker runs this module, so its module fixtures are built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("integrations.test_packaging")]


#: The environment of every subprocess: no PYTHONPATH pointing at this checkout.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built from a copy (the build writes beside its sources)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    for pkg in ("dpverify", "trainers", "audits"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(src)],
        check=True, capture_output=True, timeout=300, env=CLEAN_ENV,
    )  # fmt: skip
    (path,) = out.glob("dpverify-*.whl")
    return path


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name))


def _requirements(meta, extra: str = "") -> list[Requirement]:
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": extra})]


def _closure(reqs: list[Requirement]) -> set[str]:
    seen: set[str] = set()
    todo = [r.name for r in reqs]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for raw in md.requires(name) or []:
            r = Requirement(raw)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return seen


def test_core_requirements_exclude_jax_and_torch_and_extras_exist(wheel):
    meta = _metadata(wheel)
    core = _closure(_requirements(meta))
    assert not core & HEAVY, core & HEAVY
    assert {"jax", "opacus", "jax-privacy", "testing", "test"} <= set(meta.get_all("Provides-Extra"))
    opacus = {r.name: str(r.specifier) for r in _requirements(meta, "opacus") if r.name not in core}
    assert "==" not in opacus["torch"]  # users get a normal range
    test = {r.name: str(r.specifier) for r in _requirements(meta, "test")}
    assert test["torch"] == "==2.13.0"  # CI and tests: the CPU build available offline


def test_fresh_venv_audits_a_jsonl_run_without_jax(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300, env=CLEAN_ENV)  # fmt: skip
    site = Path(subprocess.check_output(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True,
        env=CLEAN_ENV,
    ).strip())  # fmt: skip
    links = tmp_path / "core-deps"
    links.mkdir()
    for name in _closure(_requirements(_metadata(wheel))):
        dist = md.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {"..", "bin"}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (links / top).exists():
                (links / top).symlink_to(source)
    (site / "_core_deps.pth").write_text(str(links) + "\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=CLEAN_ENV,
                              timeout=300)  # fmt: skip

    for heavy in ("jax", "torch", "flax", "optax", "hypothesis"):
        assert run(str(py), "-c", f"import {heavy}").returncode != 0, heavy
    strategies = run(str(py), "-c", "import dpverify.testing as t; t.dataset_sizes()")
    assert "ImportError: dpverify.testing's strategies need Hypothesis: pip install " \
           "'dpverify[testing]'" in strategies.stderr, strategies.stderr  # fmt: skip

    rng = np.random.default_rng(0)
    n, q, steps = 2000, 0.02, 60
    lines = [{"type": "run", "dataset_size": n, "sampler": "poisson", "sampling_rate": q,
              "noise_multiplier": 1.1, "clip_norm": 1.0, "delta": 1e-5,
              "claimed_epsilon": 5.0}]  # fmt: skip
    for t in range(steps):
        idx = np.flatnonzero(rng.random(n) < q)
        lines.append({"type": "step", "step": t, "indices": idx.tolist(), "noise_std": 1.1,
                      "noise_draws": 1, "denominator": n * q})  # fmt: skip
    src = tmp_path / "run.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    dpverify = str(env_dir / "bin" / "dpverify")
    imported = run(dpverify, "ledger", "import", str(src), "--out", str(tmp_path / "run"))
    assert imported.returncode == 0, imported.stderr
    audited = run(dpverify, "audit", str(tmp_path / "run"), "--json", str(tmp_path / "c.json"))
    assert "internal error" not in audited.stderr and "Traceback" not in audited.stderr
    assert audited.stdout.startswith("verdict: CERTIFIED"), audited.stdout + audited.stderr
    cert = json.loads((tmp_path / "c.json").read_text())
    (replay,) = [c for c in cert["checks"] if c["name"] == "replay"]
    assert replay["status"] == "skip" and replay["reason"]
    for command in (
        ("ledger", "verify", str(tmp_path / "run")),
        ("ledger", "show", str(tmp_path / "run")),
        ("epsilon", str(tmp_path / "run"), "--accountant", "rdp"),
        ("noise", "--sampling-rate", "0.01", "--steps", "100", "--delta", "1e-5",
         "--target-epsilon", "2", "--accountant", "rdp"),
        ("check-sampler", "poisson", "--config", "500,0.05,60", "--quiet"),
    ):  # fmt: skip
        done = run(dpverify, *command)
        assert done.returncode == 0, (command, done.stdout[-500:], done.stderr[-500:])
    demo = run(dpverify, "demo", "--quiet", "--out", str(tmp_path / "demo"))
    assert demo.returncode == 2 and "pip install 'dpverify[jax]'" in demo.stderr, demo.stderr
