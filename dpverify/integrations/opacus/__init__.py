"""Certify Opacus runs: ``record(...)`` around an ordinary Opacus training loop.

Example::

    from dpverify.integrations.opacus import record
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader,
        noise_multiplier=1.1, max_grad_norm=1.0, poisson_sampling=True)
    with record("runs/digits", privacy_engine=engine, model=model, optimizer=optimizer,
                data_loader=loader, delta=1e-5, checkpoint_every=25):
        for x, y in loader:
            optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
    # then: dpverify audit runs/digits

Importing this module imports torch and Opacus (the ``[opacus]`` extra).  The
auditor's PyTorch replay lives in :mod:`dpverify.integrations.opacus.replay`
and shares no code with the recorder.
"""

from dpverify.integrations._errors import UnsupportedRun as UnsupportedRun
from dpverify.integrations.opacus._recorder import LOSSES as LOSSES
from dpverify.integrations.opacus._recorder import Recording as Recording
from dpverify.integrations.opacus._recorder import record as record

__all__ = ["LOSSES", "Recording", "UnsupportedRun", "record"]
