"""Small real ledgers for the accounting tests (written with dpverify.ledger)."""

import numpy as np
import pytest

from dpverify.ledger import LedgerWriter, RunHeader, Seal, Step


def write_run(run_dir, *, steps=20, resume_at=None, repeat_to=None, header=None, overrides=None):
    """Write RUN_DIR/ledger with ``steps`` steps; optionally resume at ``resume_at``
    and re-run steps ``resume_at..repeat_to-1`` (then continue to ``steps``)."""
    header = header or RunHeader(
        dataset_size=1000,
        sampler="poisson",
        sampling_rate=0.01,
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=1e-5,
        claimed_epsilon=5.0,
    )
    overrides = overrides or {}
    rng = np.random.default_rng(0)
    path = run_dir / "ledger"

    def step(t):
        idx = np.sort(rng.choice(header.dataset_size, size=10, replace=False))
        return Step(step=t, indices=idx, **overrides.get(t, {}))

    first = steps if resume_at is None else repeat_to
    with LedgerWriter.create(path, header) as w:
        for t in range(first):
            w.append(step(t))
        if resume_at is None:
            w.close(Seal(steps_executed=steps, final_step=steps))
            return path
    executed = first
    with LedgerWriter.resume(path, step=resume_at) as w:
        for t in range(resume_at, steps):
            w.append(step(t))
            executed += 1
        w.close(Seal(steps_executed=executed, final_step=steps))
    return path


@pytest.fixture
def make_run(tmp_path):
    def _make(**kwargs):
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        run.mkdir()
        write_run(run, **kwargs)
        return run

    return _make
