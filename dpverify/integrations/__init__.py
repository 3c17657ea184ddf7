"""Recorders that write a dpverify ledger from other frameworks' real training runs.

Import the integration you use explicitly; importing this package imports
neither torch nor JAX:

* :mod:`dpverify.integrations.opacus` — ``record(...)``, a context manager
  around an ordinary Opacus training loop (needs the ``[opacus]`` extra).  It
  records the batches Opacus's data loader produced, the mechanics measured
  from the optimiser, replayable noise and checkpoints, so the auditor can
  replay the run with a float64 PyTorch reference.
* :mod:`dpverify.integrations.jax_privacy` — ``record_batches(...)``, which
  writes every global batch a jax_privacy ``BatchSelectionStrategy`` yields
  (needs the ``[jax-privacy]`` extra).

A recorder never changes what the framework computes; what it cannot certify
(per-layer or adaptive clipping, distributed training, gradient accumulation,
...) it refuses with one clear line (:class:`UnsupportedRun`).
"""

from dpverify.integrations._errors import UnsupportedRun as UnsupportedRun

__all__ = ["UnsupportedRun"]
