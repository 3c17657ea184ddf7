"""ε of recorded Opacus runs: Opacus's own RDP and PRV accountants vs dpverify's.

Each case trains the digits MLP with Opacus inside
:func:`dpverify.integrations.opacus.record`, then computes ε at δ = 1e-5 for
the very steps the ledger recorded with Opacus's ``RDPAccountant`` and
``PRVAccountant`` (fed the engine's history) and with dpverify's RDP, PLD and
PRV (:func:`dpverify.accounting.epsilon_from_ledger`).  One JSON object per
line on stdout.  The table in docs/accounting.md comes from this script::

    python benchmarks/opacus_epsilon.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

DELTA = 1e-5
CASES = [  # (name, batch size, σ, epochs, poisson)
    ("b64-s1.1-1ep", 64, 1.1, 1, True),
    ("b64-s1.1-10ep", 64, 1.1, 10, True),
    ("b256-s2.0-20ep", 256, 2.0, 20, True),
    ("b16-s0.8-2ep", 16, 0.8, 2, True),
    ("shuffle-b64-s1.1-2ep", 64, 1.1, 2, False),
]


def run_case(root: Path, name: str, batch: int, sigma: float, epochs: int, poisson: bool) -> dict:
    import torch
    from opacus import PrivacyEngine
    from opacus.accountants import PRVAccountant, RDPAccountant
    from sklearn.datasets import load_digits

    from dpverify.accounting import epsilon_from_ledger
    from dpverify.integrations.opacus import record
    from dpverify.ledger import read_ledger

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32),
                                          torch.tensor(y))  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, loader = engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
            data_loader=torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True),
            noise_multiplier=sigma, max_grad_norm=1.0, poisson_sampling=poisson,
        )  # fmt: skip
        with record(root / name, privacy_engine=engine, model=model, optimizer=opt,
                    data_loader=loader, delta=DELTA, checkpoint_every=None) as rec:  # fmt: skip
            for _ in range(epochs):
                for xb, yb in loader:
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(xb), yb).backward()
                    opt.step()
    history = list(engine.accountant.history)
    opacus_eps = {}
    for label, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        acc = cls()
        acc.history = list(history)
        opacus_eps[label] = float(acc.get_epsilon(DELTA))
    ours = epsilon_from_ledger(read_ledger(root / name / "ledger"))
    header = read_ledger(root / name / "ledger").header
    return {
        "case": name, "sampler": header.sampler, "q_opacus": header.extra["opacus_sample_rate"],
        "sigma": sigma, "steps": rec.steps,
        "opacus_rdp": opacus_eps["rdp"], "opacus_prv": opacus_eps["prv"],
        "ours_rdp": ours.rdp.epsilon, "ours_pld": ours.pld.epsilon, "ours_prv": ours.prv.epsilon,
        "shuffle_lower_bound": ours.lower_bound, "delta": DELTA,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first case only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES[:1] if args.quick else CASES:
            print(json.dumps(run_case(Path(tmp), *case)), flush=True)


if __name__ == "__main__":
    main()
