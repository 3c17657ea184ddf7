"""Suite-wide settings.

Hypothesis: no per-example deadline.  Its default (200 ms per example) is a
wall-clock limit, which fails on a loaded machine and passes on a fast one
whatever the code does; speed is measured in ``benchmarks/`` instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest


def _share_jax_compilations() -> None:
    """One JAX compilation cache for the whole test session, subprocesses included.

    Many tests compile the same programs (the digits MLP step in every
    ``dpverify train`` subprocess, every process of a multi-process job and
    its single-process twin, replay in the audits).  JAX's persistent cache
    (keyed by the program, its options and the JAX/XLA versions) lets the
    second compilation of a program load the first one's executable; tracing
    still happens, so the compile-once counters the tests read are unchanged.
    The directory is new for each session (no state from earlier runs) and is
    removed at its end; xdist workers and subprocesses inherit it through the
    environment.  ``JAX_COMPILATION_CACHE_DIR`` set by the caller wins.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    path = tempfile.mkdtemp(prefix="dpverify-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, path, True)


_share_jax_compilations()

try:
    from hypothesis import settings
except ImportError:  # a core install without the [testing] extra
    pass
else:
    settings.register_profile("dpverify", deadline=None)
    settings.load_profile("dpverify")


def _plan_ledger(path, plan):
    """A small Poisson ledger (N = 100, q = 0.1) written from a plan; returns it read back.

    ``plan`` is a list of ints (a step with one index), ``("ck", s)`` (a
    checkpoint record at step ``s``, digest ``f"d{s}"``) and ``("resume", s)``
    (close the writer and resume from checkpoint ``s``).
    """
    import numpy as np

    from dpverify.ledger import LedgerWriter, read_ledger
    from dpverify.ledger.records import Checkpoint, RunHeader, Step

    header = RunHeader(
        dataset_size=100,
        sampler="poisson",
        sampling_rate=0.1,
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=1e-5,
    )
    writer = LedgerWriter.create(path, header)
    for item in plan:
        if isinstance(item, int):
            writer.append(Step(step=item, indices=np.array([item % 100])))
        elif item[0] == "ck":
            writer.append(Checkpoint(step=item[1], digest=f"d{item[1]}", path=None))
        else:
            writer.close()
            writer = LedgerWriter.resume(path, step=item[1], checkpoint_digest=f"d{item[1]}")
    writer.close()
    return read_ledger(path)


@pytest.fixture
def plan_ledger():
    """:func:`_plan_ledger`: write a small ledger from a plan of steps, checkpoints and resumes."""
    return _plan_ledger


def _run_with_host_devices(script: str, devices: int, *, timeout: float):
    """Run the test module ``script`` as a script with ``devices`` simulated host
    devices (``XLA_FLAGS=--xla_force_host_platform_device_count``, fixed when
    JAX initialises, hence a fresh process); its last stdout line, as JSON."""
    import json
    import subprocess
    import sys

    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, os.path.abspath(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def run_with_host_devices():
    """:func:`_run_with_host_devices`, for tests that need several devices."""
    return _run_with_host_devices
