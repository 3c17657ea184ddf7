"""The training loop: ledger contents, write-ahead checkpoints, secrets, summary, one compilation."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from dpverify.errors import InvalidArgument, UnusableInput
from dpverify.ledger import Checkpoint, Step, read_ledger
from trainers.checkpoint import file_digest
from trainers.loop import TrainConfig, train
from trainers.run_plan import auto_physical_batch_size, plan_run

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("trainers.test_loop")

SEED = 987_654_321  # a distinctive value we can search files for

SMALL = dict(
    task="digits-mlp",
    expected_batch_size=40,
    noise_multiplier=1.0,
    clip_norm=1.0,
    steps=12,
    physical_batch_size=16,
    checkpoint_every=5,
    seed=SEED,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    summary = train(TrainConfig(**SMALL), out, progress=False)
    return out, summary


def test_summary_fields(run):
    out, summary = run
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["steps"] == summary["steps_executed"] == 12
    assert summary["compilations"] == 1
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert summary["examples_per_second"] > 0
    assert summary["physical_batch_size"] == 16 and summary["precision"] == "float32"
    assert summary["sampler"] == "poisson" and summary["shortcut"] is False
    assert summary["delta"] == 1e-5
    eps = summary["epsilon"]
    assert eps["pld"]["epsilon"] > 0 and eps["rdp"]["epsilon"] >= eps["pld"]["epsilon"] * 0.99
    assert eps["prv"]["lower"] <= eps["prv"]["upper"]
    assert summary["claimed_epsilon"] == pytest.approx(eps["pld"]["epsilon"], rel=1e-6)
    assert summary["wall_seconds"] > 0
    # The step's per-compilation XLA options are those of its clipping method.
    import jax

    from trainers.xla_options import step_options

    assert summary["compiler_options"] == step_options(summary["clipping"], jax.default_backend())


def test_ledger_has_every_step_once_and_is_sealed(run):
    out, summary = run
    ledger = read_ledger(out / "ledger")
    assert [s.step for s in ledger.steps] == list(range(12))
    assert ledger.resumes == ()
    assert [c.step for c in ledger.checkpoints] == [0, 5, 10, 12]
    assert ledger.seal.steps_executed == 12 and ledger.seal.final_step == 12
    assert ledger.seal.claimed_epsilon == pytest.approx(summary["claimed_epsilon"])
    assert ledger.head == summary["ledger_head"]
    # Batch sizes vary, including the number of physical batches, with one compilation.
    assert len({s.physical_batches for s in ledger.steps}) >= 2
    for s in ledger.steps:
        assert s.physical_batches == -(-s.batch_size // 16)
        assert s.noise_std == pytest.approx(1.0) and s.noise_draws == 1
        assert s.denominator == pytest.approx(40.0)
        assert s.max_clipped_norm <= 1.0 + 1e-5
        assert s.update_sketch is not None and len(s.update_sketch) >= 1


def test_write_ahead_order_and_checkpoint_digests(run):
    out, _ = run
    ledger = read_ledger(out / "ledger")
    done = 0
    for rec in ledger.records:
        if isinstance(rec, Step):
            done = rec.step + 1
        elif isinstance(rec, Checkpoint):
            assert rec.step == done  # every step before the checkpoint is already recorded
            assert file_digest(out / rec.path) == rec.digest


def test_header_records_the_run(run):
    out, _ = run
    h = read_ledger(out / "ledger").header
    assert h.dataset_size == 1437 and h.sampler == "poisson"
    assert h.sampling_rate == pytest.approx(40 / 1437)
    assert h.expected_batch_size == pytest.approx(40.0)
    assert h.physical_batch_size == 16 and h.precision == "float32" and h.task == "digits-mlp"
    assert h.noise_key_digest == hashlib.sha256((out / "noise.key").read_bytes()).hexdigest()
    assert h.dataset_fingerprint and len(h.dataset_fingerprint) == 64
    assert {"jax", "flax", "optax", "python"} <= set(h.software)
    assert h.claimed_epsilon > 0 and h.accountant == "pld"


def test_secrets_are_private_and_nowhere_public(run):
    out, _ = run
    # summary.json too: it holds the unnoised loss of the last batch.
    for name in ("noise.key", "private.json", "summary.json"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
    assert json.loads((out / "private.json").read_text())["seed"] == SEED
    key_hex = (out / "noise.key").read_bytes().hex()
    for path in Path(out).rglob("*"):
        if path.is_file() and path.name not in ("noise.key", "private.json"):
            data = path.read_bytes()
            assert key_hex.encode() not in data, path
            assert bytes.fromhex(key_hex) not in data, path
            if path.suffix == ".json":
                assert str(SEED) not in data.decode(), path


def test_existing_run_is_not_overwritten(run):
    out, _ = run
    with pytest.raises(UnusableInput, match="already holds a run"):
        train(TrainConfig(**SMALL), out, progress=False)


def test_shortcut_sampler_is_labelled_and_can_lie_in_the_header(tmp_path):
    cfg = dict(SMALL, steps=3, sampler="shuffle", declare_sampler="poisson")
    summary = train(TrainConfig(**cfg), tmp_path / "s", progress=False)
    assert summary["shortcut"] is True and "shortcut" in summary["note"]
    assert summary["sampler"] == "shuffle" and summary["declared_sampler"] == "poisson"
    ledger = read_ledger(tmp_path / "s" / "ledger")
    assert ledger.header.sampler == "poisson"  # the lie the auditor must catch
    assert "shuffle" not in (tmp_path / "s" / "config.json").read_text()
    # Fixed-size shuffled batches: every step has the same size.
    assert len({s.batch_size for s in ledger.steps}) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampling_rate": 1.5}, r"sampling_rate=1.5 must be in \(0, 1\]"),
        ({"sampling_rate": 0.0}, "sampling_rate=0.0"),
        ({"noise_multiplier": -1.0}, "noise_multiplier=-1.0 must be >= 0"),
        ({"clip_norm": 0.0}, "clip_norm=0.0 must be > 0"),
        ({"physical_batch_size": 0}, "physical_batch_size=0 must be an integer >= 1"),
        ({"task": "nope"}, "task='nope' is unknown"),
        ({"steps": 0}, "steps=0"),
        ({"steps": 5, "epochs": 1.0}, "steps or epochs, not both"),
        ({"sampling_rate": 0.1, "expected_batch_size": 10}, "not both"),
        ({"precision": "fp8"}, "precision='fp8'"),
        ({"sampler": "magic"}, "sampler='magic'"),
        ({"mutation": "nope"}, "mutation='nope'"),
        ({"delta": 1.0}, "delta=1.0"),
    ],
)
def test_invalid_config_is_refused(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        TrainConfig(**kwargs)


def test_plan_resolves_defaults_epochs_and_expected_batch_size():
    plan = plan_run(TrainConfig(expected_batch_size=100, epochs=2.0), 1000, 5000)
    assert plan.sampling_rate == pytest.approx(0.1) and plan.steps == 20
    assert plan.expected_batch_size == pytest.approx(100.0)
    default = plan_run(TrainConfig(), 1437, 5000)
    assert default.physical_batch_size == 64 and default.optimizer == "adam"
    assert default.delta == 1e-5 and default.declared_sampler == "poisson"
    with pytest.raises(InvalidArgument, match="must be <= dataset size"):
        plan_run(TrainConfig(expected_batch_size=2000), 1437, 5000)
    assert plan_run(TrainConfig(), 10**6, 5000).delta == pytest.approx(1e-7)


def test_auto_physical_batch_size_is_a_power_of_two_within_memory():
    assert auto_physical_batch_size(64, 1000, memory_bytes=1 << 30) == 128
    assert auto_physical_batch_size(100, 1000, memory_bytes=1 << 30) == 128
    # Memory-bound: 12 bytes per parameter per example.
    assert auto_physical_batch_size(1000, 10**6, memory_bytes=12 * 10**6 * 40) == 32
    assert auto_physical_batch_size(0.3, 10**9, memory_bytes=1) == 1


def test_target_epsilon_calibrates_sigma_and_the_claim_meets_it():
    from dpverify.accounting import epsilon_poisson

    plan = plan_run(TrainConfig(expected_batch_size=256, steps=150, target_epsilon=2.0), 1437, 5000)
    eps = epsilon_poisson(plan.sampling_rate, plan.noise_multiplier, 150, plan.delta)
    assert eps <= 2.0 and eps == pytest.approx(2.0, rel=0.02)


def test_data_path_is_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_run(TrainConfig(data_path="data.npz"), 1000, 10)
    assert plan.data_path == str(tmp_path / "data.npz")


def test_write_ahead_steps_are_on_disk_before_each_checkpoint_file(tmp_path, monkeypatch):
    """docs/ledger-format.md §6 (write-ahead): step t's record is durable before the parameters after t are saved.

    A second reader opens the ledger from disk at the moment each checkpoint
    file is about to be written: every step before it must already be there
    (the writer buffers up to 64 records in memory, so without the flush they
    would not be).
    """
    import trainers.checkpoint as ckpt

    out = tmp_path / "wa"
    seen: list[tuple[int, list[int]]] = []
    real_save = ckpt.save_checkpoint

    def spy(run_dir, step, *args, **kwargs):
        seen.append((step, [s.step for s in read_ledger(out / "ledger").steps]))
        return real_save(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", spy)
    train(TrainConfig(**dict(SMALL, steps=7, checkpoint_every=3)), out, progress=False)
    assert [step for step, _ in seen] == [0, 3, 6, 7]
    for step, on_disk in seen:
        assert on_disk == list(range(step)), (step, on_disk)


def test_physical_batch_memory_estimate_refuses_only_what_cannot_fit():
    from trainers.run_plan import check_physical_batch_memory, physical_batch_bytes

    assert physical_batch_bytes(100, 1000, example_bytes=256) == 100 * (12_000 + 256)
    check_physical_batch_memory(100, 1000, 256, memory_bytes=100 * 12_256)  # exactly fits
    with pytest.raises(InvalidArgument, match=r"physical_batch_size=101 needs about .* GiB"):
        check_physical_batch_memory(101, 1000, 256, memory_bytes=100 * 12_256)
    # plan_run applies it to an explicit p (auto already fits by construction)
    with pytest.raises(InvalidArgument, match="physical_batch_size=100000000 needs about"):
        plan_run(TrainConfig(physical_batch_size=10**8), 1437, 10**6)


def test_a_run_that_fails_while_being_created_leaves_nothing_behind(tmp_path, monkeypatch):
    """A failure after the first file was written (here: building the model)
    removes what open_new wrote, so the same command can simply be rerun."""
    import trainers.components as components

    def broken(*a, **k):
        raise RuntimeError("simulated failure after the ledger header")

    monkeypatch.setattr(components, "build_components", broken)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="simulated"):
        train(TrainConfig(**SMALL), out, progress=False)
    assert not out.exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's own file")
    with pytest.raises(RuntimeError, match="simulated"):
        train(TrainConfig(**SMALL), existing, progress=False)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_a_new_run_that_fails_at_its_first_step_leaves_nothing_behind(tmp_path, monkeypatch):
    """E.g. XLA's RESOURCE_EXHAUSTED on the first step: nothing was trained, so the
    run directory is removed and the same command can be rerun."""
    import trainers.loop as loop

    def broken(*a, **k):
        raise RuntimeError("simulated RESOURCE_EXHAUSTED at the first step")

    monkeypatch.setattr(loop, "_step_record", broken)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        train(TrainConfig(**SMALL), out, progress=False)
    assert not out.exists()


def test_steps_are_recorded_one_behind_the_device_and_before_each_checkpoint(tmp_path, monkeypatch):
    """Step t is recorded after step t + 1 is queued (the host's work overlaps the
    device's), and every step is recorded before the checkpoint that follows it."""
    import trainers.checkpoint as ckpt
    import trainers.dpsgd as dpsgd
    from dpverify.ledger.writer import LedgerWriter

    events: list[tuple[str, int]] = []
    real_step, real_append, real_save = (
        dpsgd.MaskedDPSGD.step_async, LedgerWriter.append, ckpt.save_checkpoint
    )  # fmt: skip
    real_precompile = dpsgd.MaskedDPSGD.precompile
    compiling = []

    def precompile(self, *args, **kwargs):
        events.append(("precompile", -1))
        compiling.append(True)
        try:
            return real_precompile(self, *args, **kwargs)
        finally:
            compiling.pop()

    def step_async(self, params, opt_state, x, y, indices, noise_key, step, **kw):
        if not compiling:  # precompile's own throwaway steps are not the run's
            events.append(("dispatch", step))
        return real_step(self, params, opt_state, x, y, indices, noise_key, step, **kw)

    def append(self, record):
        if isinstance(record, Step):
            events.append(("record", record.step))
        return real_append(self, record)

    def save(run_dir, step, *args, **kwargs):
        events.append(("checkpoint", step))
        return real_save(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(dpsgd.MaskedDPSGD, "step_async", step_async)
    monkeypatch.setattr(dpsgd.MaskedDPSGD, "precompile", precompile)
    monkeypatch.setattr(LedgerWriter, "append", append)
    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    train(TrainConfig(**dict(SMALL, steps=7, checkpoint_every=3)), tmp_path / "r", progress=False)
    d, r, c = "dispatch", "record", "checkpoint"
    assert events == [
        (c, 0), ("precompile", -1),
        (d, 0), (d, 1), (r, 0), (d, 2), (r, 1), (r, 2), (c, 3),
        (d, 3), (d, 4), (r, 3), (d, 5), (r, 4), (r, 5), (c, 6),
        (d, 6), (r, 6), (c, 7),
    ]  # fmt: skip


def test_a_step_that_fails_on_the_device_is_not_recorded_and_the_ones_before_are(
    tmp_path, monkeypatch
):
    """With dispatch ahead of recording, a step's error surfaces when its statistics
    are fetched: the steps before it are in the ledger, the failed one is not."""
    import trainers.dpsgd as dpsgd

    real_step = dpsgd.MaskedDPSGD.step_async

    class Failed:
        def result(self):
            raise RuntimeError("simulated device failure in step 5")

    def step_async(self, params, opt_state, x, y, indices, noise_key, step, **kw):
        out = real_step(self, params, opt_state, x, y, indices, noise_key, step, **kw)
        return (*out[:2], Failed()) if step == 5 else out

    monkeypatch.setattr(dpsgd.MaskedDPSGD, "step_async", step_async)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="device failure in step 5"):
        train(TrainConfig(**SMALL), out, progress=False)
    ledger = read_ledger(out / "ledger")
    assert ledger.seal is None and [s.step for s in ledger.steps] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("canaries", [0, 50])
def test_every_batch_shape_compiles_before_the_first_step(tmp_path, monkeypatch, canaries):
    """The loop compiles every last-batch shape before step 0 (not at its first use,
    some steps in), with the run's own arguments: with canaries an all-zero canary
    sum, so the steps' canary sums reuse what was compiled (one compilation)."""
    import trainers.dpsgd as dpsgd

    calls = []
    real_precompile, real_step = dpsgd.MaskedDPSGD.precompile, dpsgd.MaskedDPSGD.step_async

    def precompile(self, params, opt_state, x, y, *, extra_sum=None):
        calls.append(("precompile", extra_sum))
        before = dict(self.trace_counts)
        real_precompile(self, params, opt_state, x, y, extra_sum=extra_sum)
        calls.append(("traced", {k: v - before.get(k, 0) for k, v in self.trace_counts.items()}))
        self._after_precompile = dict(self.trace_counts)

    def step_async(self, *args, **kwargs):
        if hasattr(self, "_after_precompile"):
            calls.append(("step", None))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(dpsgd.MaskedDPSGD, "precompile", precompile)
    monkeypatch.setattr(dpsgd.MaskedDPSGD, "step_async", step_async)
    trainers = []
    real_init = dpsgd.MaskedDPSGD.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        trainers.append(self)

    monkeypatch.setattr(dpsgd.MaskedDPSGD, "__init__", init)
    config = TrainConfig(**dict(SMALL, canaries=canaries, optimizer="sgd"))
    summary = train(config, tmp_path / "r", progress=False)
    assert [c[0] for c in calls[:2]] == ["precompile", "traced"]
    assert calls[2:] == [("step", None)] * 12  # no step before precompile finished
    extra = calls[0][1]
    if canaries:
        import jax
        import numpy as np

        leaves = jax.tree_util.tree_leaves(extra)
        assert leaves and all(not np.any(a) for a in leaves)
    else:
        assert extra is None
    assert sum(calls[1][1].values()) >= 1  # it compiled something
    (trainer,) = trainers
    assert trainer.trace_counts == trainer._after_precompile  # nothing traced mid-run
    assert summary["compilations"] == 1
    assert summary["compile_seconds"] > 0


def test_a_precompile_without_the_memory_for_its_copies_is_skipped(tmp_path, monkeypatch):
    """precompile's throwaway steps need a copy of the parameters and optimiser state:
    when the device runs out of memory there, the run goes on without it (its shapes
    compile at first use); any other error still stops the run, leaving nothing."""
    import trainers.dpsgd as dpsgd

    def no_memory(self, *args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: simulated, while copying the parameters")

    monkeypatch.setattr(dpsgd.MaskedDPSGD, "precompile", no_memory)
    summary = train(TrainConfig(**SMALL), tmp_path / "r", progress=False)
    assert summary["steps_executed"] == 12 and summary["compile_seconds"] is None
    assert summary["compilations"] == 1
    assert [s.step for s in read_ledger(tmp_path / "r" / "ledger").steps] == list(range(12))

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated compiler crash")

    monkeypatch.setattr(dpsgd.MaskedDPSGD, "precompile", broken)
    with pytest.raises(RuntimeError, match="compiler crash"):
        train(TrainConfig(**SMALL), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
