"""The Opacus recorder: what it writes, what it refuses, and replay of its runs."""

from __future__ import annotations

import hashlib
import stat

import numpy as np
import pytest

torch = pytest.importorskip("torch")
opacus = pytest.importorskip("opacus")

from opacus.optimizers import DPOptimizer  # noqa: E402

from dpverify.integrations import UnsupportedRun  # noqa: E402
from dpverify.integrations.opacus import record  # noqa: E402
from dpverify.integrations.opacus import replay as opacus_replay  # noqa: E402
from dpverify.integrations.opacus._artifacts import noise_generator  # noqa: E402
from dpverify.ledger import read_ledger  # noqa: E402

# One worker runs this module, so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("integrations.test_opacus")


class NoNoise(DPOptimizer):
    """A broken step: noise is not added."""

    def add_noise(self):
        for p in self.params:
            p.grad = p.summed_grad.view_as(p).clone()


class NoClipping(DPOptimizer):
    """A broken step: per-example gradients are summed without clipping."""

    def clip_and_accumulate(self):
        for p in self.params:
            p.summed_grad = self._get_flat_grad_sample(p).sum(dim=0)


@pytest.fixture(scope="module")
def honest(opacus_run, tmp_path_factory):
    return opacus_run(tmp_path_factory.mktemp("opacus") / "run", steps=24)


def test_header_translates_opacus_terms(honest):
    ledger = read_ledger(honest.run_dir / "ledger")
    h = ledger.header
    n = 1797
    assert (h.dataset_size, h.sampler) == (n, "poisson")
    assert h.sampling_rate == pytest.approx(1 / 29)  # Opacus: 1/len(loader), ceil(1797/64) = 29
    assert h.expected_batch_size == int(n / 29)  # Opacus divides by int(q·N), not q·N
    assert (h.noise_multiplier, h.clip_norm) == (1.1, 1.0)
    assert h.accountant == "opacus-prv"
    assert {"torch", "opacus", "dpverify"} <= set(h.software)
    assert h.extra["framework"] == "opacus"
    assert h.extra["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    key = (honest.run_dir / "noise.key").read_bytes()
    assert h.noise_key_digest == hashlib.sha256(key).hexdigest()
    for secret in ("noise.key", "opacus/data.pt"):
        assert stat.S_IMODE((honest.run_dir / secret).stat().st_mode) == 0o600


def test_steps_seal_and_write_ahead_checkpoints(honest):
    ledger = read_ledger(honest.run_dir / "ledger")
    assert [s.step for s in ledger.steps] == list(range(24))
    assert [c.step for c in ledger.checkpoints] == [0, 10, 20, 24]
    for c in ledger.checkpoints:
        data = (honest.run_dir / c.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == c.digest
    assert ledger.seal.claimed_epsilon == pytest.approx(honest.engine.get_epsilon(1e-5))
    assert ledger.seal.steps_executed == 24 and honest.sealed
    for s in ledger.steps:
        assert s.noise_std == pytest.approx(1.1) and s.noise_draws == 1
        assert s.denominator == 61.0
        assert 0 <= s.num_clipped <= s.batch_size
        assert s.max_grad_norm is None or s.max_grad_norm > 0
    sizes = [s.batch_size for s in ledger.steps]
    assert 30 < np.mean(sizes) < 95  # Poisson around q·N ≈ 62


def test_recorded_batches_are_the_batches_opacus_trained_on(opacus_run, tmp_path):
    """The clipped count and the norms come from the very examples the ledger names."""
    rec = opacus_run(tmp_path / "run", steps=3, checkpoint_every=None, save_data=True)
    ledger = read_ledger(rec.run_dir / "ledger")
    blob = torch.load(rec.run_dir / "opacus/data.pt", weights_only=True)
    first = torch.load(rec.run_dir / ledger.checkpoints[0].path, weights_only=True)["model"]
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    model.load_state_dict(first)
    step0 = ledger.steps[0]
    norms = []
    for i in step0.indices:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(blob["x"][i : i + 1]), blob["y"][i : i + 1]).backward()
        norms.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))))
    assert step0.max_grad_norm == pytest.approx(max(norms), rel=1e-4)
    assert step0.num_clipped == sum(n > 1.0 for n in norms)


def test_noise_rule_known_answer():
    """Recorder and reference derive step noise independently; both pinned to one value."""
    key = bytes(range(32))
    z = torch.normal(0.0, 1.0, size=(3,), generator=noise_generator(key, 7), dtype=torch.float32)
    expected = [-0.9751352667808533, -0.11002210527658463, -2.1603996753692627]
    assert z.tolist() == pytest.approx(expected, abs=0)


def test_honest_run_replays(honest):
    report = opacus_replay.replay_segments(honest.run_dir, read_ledger(honest.run_dir / "ledger"))
    assert report.skipped_reason is None
    assert [(o.start, o.end) for o in report.outcomes] == [(0, 10), (10, 20), (20, 24)]
    assert all(o.ok for o in report.outcomes), report.outcomes
    assert max(o.rel_deviation for o in report.outcomes) < 1e-5
    assert all(o.diagnosis is None for o in report.outcomes)


@pytest.mark.parametrize(
    ("broken", "diagnosis"),
    [(NoNoise, "noise was not added"), (NoClipping, "not clipped")],
    ids=["no-noise", "no-clipping"],
)
def test_broken_steps_are_refuted_by_replay(opacus_run, tmp_path, broken, diagnosis):
    rec = opacus_run(tmp_path / "run", steps=10, optimizer_class=broken)
    report = opacus_replay.replay_segments(rec.run_dir, read_ledger(rec.run_dir / "ledger"))
    assert report.skipped_reason is None
    (outcome,) = report.outcomes
    assert not outcome.ok and outcome.rel_deviation > 100 * opacus_replay.TOLERANCE
    assert "deviate" in outcome.reason
    assert diagnosis in outcome.diagnosis


def test_tampered_files_skip_replay_never_refute(opacus_run, tmp_path):
    rec = opacus_run(tmp_path / "run", steps=2, checkpoint_every=None)
    ledger = read_ledger(rec.run_dir / "ledger")
    (rec.run_dir / "noise.key").write_bytes(bytes(32))
    report = opacus_replay.replay_segments(rec.run_dir, ledger)
    assert report.outcomes == () and "noise_key_digest" in report.skipped_reason


def test_shuffled_batches_are_recorded_as_shuffle(opacus_run, tmp_path):
    rec = opacus_run(tmp_path / "run", poisson=False, steps=5, checkpoint_every=None)
    h = read_ledger(rec.run_dir / "ledger").header
    assert h.sampler == "shuffle" and dict(h.sampler_params) == {"batch_size": 64}
    assert h.sampling_rate == pytest.approx(64 / 1797)
    assert h.extra["opacus_sample_rate"] == pytest.approx(1 / 29)
    assert [s.batch_size for s in read_ledger(rec.run_dir / "ledger").steps] == [64] * 5


def test_batch_memory_manager_records_logical_steps_and_replays(tmp_path):
    """Opacus's own virtual steps: physical batches of 32, one noisy step per logical batch."""
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32),
                                          torch.tensor(y))  # fmt: skip
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    engine = PrivacyEngine()
    model, opt, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        data_loader=torch.utils.data.DataLoader(data, batch_size=128),
        noise_multiplier=1.0, max_grad_norm=1.0,
    )  # fmt: skip
    physical = 0
    with record(tmp_path / "run", privacy_engine=engine, model=model, optimizer=opt,
                data_loader=loader, delta=1e-5, checkpoint_every=5) as rec:  # fmt: skip
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=32,
                                optimizer=opt) as physical_loader:  # fmt: skip
            for xb, yb in physical_loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
                physical += 1
    ledger = read_ledger(rec.run_dir / "ledger")
    assert len(ledger.steps) == 15 < physical  # ceil(1797/128) logical steps
    assert max(s.batch_size for s in ledger.steps) > 32
    assert sum(s.physical_batches for s in ledger.steps) == physical
    report = opacus_replay.replay_segments(rec.run_dir, ledger)
    assert report.outcomes and all(o.ok for o in report.outcomes), report


def test_gradient_accumulation_is_refused(tmp_path):
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    model = torch.nn.Linear(4, 2)
    engine = PrivacyEngine()
    model, opt, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=torch.utils.data.DataLoader(data, batch_size=8, shuffle=True),
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
    )  # fmt: skip
    with pytest.raises(UnsupportedRun, match="gradient accumulation"):
        with record(tmp_path / "run", privacy_engine=engine, model=model, optimizer=opt,
                    data_loader=loader, delta=1e-5):  # fmt: skip
            it = iter(loader)
            for _ in range(2):
                xb, yb = next(it)
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    ledger = read_ledger(tmp_path / "run" / "ledger")
    assert ledger.seal is None and ledger.steps == ()


@pytest.mark.parametrize("clipping", ["per_layer", "adaptive"])
def test_per_layer_and_adaptive_clipping_are_refused(tmp_path, clipping):
    from opacus import PrivacyEngine

    model = torch.nn.Linear(4, 2)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    engine = PrivacyEngine()
    kw = {"max_grad_norm": [1.0, 1.0]} if clipping == "per_layer" else {
        "max_grad_norm": 1.0, "target_unclipped_quantile": 0.5, "clipbound_learning_rate": 0.2,
        "max_clipbound": 10.0, "min_clipbound": 0.1, "unclipped_num_std": 1.0,
    }  # fmt: skip
    model, opt, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=torch.utils.data.DataLoader(data, batch_size=8),
        noise_multiplier=1.0, clipping=clipping, **kw,
    )  # fmt: skip
    with pytest.raises(UnsupportedRun, match="clipping"):
        with record(tmp_path / "run", privacy_engine=engine, model=model, optimizer=opt,
                    data_loader=loader, delta=1e-5):  # fmt: skip
            pass
    assert not (tmp_path / "run" / "ledger").exists()


def test_accountant_with_history_is_refused(tmp_path):
    from opacus import PrivacyEngine

    model = torch.nn.Linear(4, 2)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    engine = PrivacyEngine(accountant="rdp")
    model, opt, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=torch.utils.data.DataLoader(data, batch_size=8),
        noise_multiplier=1.0, max_grad_norm=1.0,
    )  # fmt: skip
    engine.accountant.step(noise_multiplier=1.0, sample_rate=0.2)
    with pytest.raises(UnsupportedRun, match="from its first step"):
        with record(tmp_path / "run", privacy_engine=engine, model=model, optimizer=opt,
                    data_loader=loader, delta=1e-5):  # fmt: skip
            pass



def test_secure_mode_and_ghost_clipping_are_refused(tmp_path):
    from opacus import PrivacyEngine

    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    model = torch.nn.Linear(4, 2)
    engine = PrivacyEngine()
    model, opt, _criterion, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=torch.utils.data.DataLoader(data, batch_size=8), noise_multiplier=1.0,
        max_grad_norm=1.0, grad_sample_mode="ghost", criterion=torch.nn.CrossEntropyLoss(),
    )  # fmt: skip
    with pytest.raises(UnsupportedRun, match="ghost clipping"):
        with record(tmp_path / "ghost", privacy_engine=engine, model=model, optimizer=opt,
                    data_loader=loader, delta=1e-5):  # fmt: skip
            pass
    model = torch.nn.Linear(4, 2)
    engine = PrivacyEngine()
    model, opt, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=torch.utils.data.DataLoader(data, batch_size=8), noise_multiplier=1.0,
        max_grad_norm=1.0,
    )  # fmt: skip
    opt.secure_mode = True  # as PrivacyEngine(secure_mode=True) sets it (needs torchcsprng)
    with pytest.raises(UnsupportedRun, match="secure_mode"):
        with record(tmp_path / "secure", privacy_engine=engine, model=model, optimizer=opt,
                    data_loader=loader, delta=1e-5):  # fmt: skip
            pass


def test_empty_poisson_batches_are_recorded_and_adam_replays(tmp_path):
    """N = 40 at q = 1/20: some steps sample nobody; they are steps all the same (noise only)."""
    from opacus import PrivacyEngine

    torch.manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    engine = PrivacyEngine()
    model, opt, loader = engine.make_private(
        module=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.05),
        data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        noise_multiplier=1.0, max_grad_norm=0.5,
    )  # fmt: skip
    with record(tmp_path / "run", privacy_engine=engine, model=model, optimizer=opt,
                data_loader=loader, delta=1e-3, checkpoint_every=7):  # fmt: skip
        for xb, yb in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    ledger = read_ledger(tmp_path / "run" / "ledger")
    sizes = [s.batch_size for s in ledger.steps]
    assert len(sizes) == 20 and 0 in sizes  # seed 1: two empty batches
    empty = next(s for s in ledger.steps if s.batch_size == 0)
    assert empty.noise_draws == 1 and empty.max_grad_norm is None and empty.num_clipped == 0
    report = opacus_replay.replay_segments(tmp_path / "run", ledger)
    assert len(report.outcomes) == 3 and all(o.ok for o in report.outcomes), report
