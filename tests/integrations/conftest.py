"""Small Opacus runs on scikit-learn's digits, shared by the integration tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def opacus_run():
    """``opacus_run(run_dir, poisson=True, optimizer_class=None, steps=None, **record_kw)``.

    Trains a 64-16-10 MLP with Opacus on digits (σ = 1.1, C = 1, batch 64 by default,
    SGD with momentum) for ``steps`` steps (default one epoch) inside
    ``record``; ``optimizer_class`` swaps the DPOptimizer's class (for broken
    steps).  Returns the :class:`Recording`.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    from opacus import PrivacyEngine
    from sklearn.datasets import load_digits
    from torch import nn

    from dpverify.integrations.opacus import record

    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(
        torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    )

    def make(run_dir: Path, *, poisson: bool = True, optimizer_class=None, steps=None,
             accountant: str = "prv", seed: int = 0, batch_size: int = 64,
             **record_kw):  # fmt: skip
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True)
        engine = PrivacyEngine(accountant=accountant)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, opt, loader = engine.make_private(
                module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.1,
                max_grad_norm=1.0, poisson_sampling=poisson,
            )  # fmt: skip
        if optimizer_class is not None:
            opt.__class__ = optimizer_class
        loss_fn = nn.CrossEntropyLoss()
        record_kw.setdefault("checkpoint_every", 10)
        with record(run_dir, privacy_engine=engine, model=model, optimizer=opt,
                    data_loader=loader, delta=1e-5, **record_kw) as rec:  # fmt: skip
            done = 0
            while steps is None or done < steps:
                for xb, yb in loader:
                    opt.zero_grad()
                    loss_fn(model(xb), yb).backward()
                    opt.step()
                    done += 1
                    if steps is not None and done >= steps:
                        break
                if steps is None:
                    break
        rec.engine = engine
        return rec

    return make
