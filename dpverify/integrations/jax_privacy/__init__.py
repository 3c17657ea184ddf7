"""Certify the batch selection of jax_privacy runs.

``record_batches(run_dir, strategy, ...)`` wraps a jax_privacy
``BatchSelectionStrategy``'s batch iterator: every global batch it yields is
written to a dpverify ledger, the sampler is declared from the strategy (see
:mod:`dpverify.integrations.jax_privacy._declare` for the table) and the ledger
is sealed with jax_privacy's own ε for the steps taken.  The auditor then tests
the batches against the declared sampler's null and recomputes ε where an
accountant exists.  Clipping and noise happen inside the user's jitted step and
are declared, not observed: such a certificate does not vouch for them.

Importing this module does not import JAX; recording imports jax_privacy.
"""

from dpverify.integrations._errors import UnsupportedRun as UnsupportedRun
from dpverify.integrations.jax_privacy._declare import Declaration as Declaration
from dpverify.integrations.jax_privacy._declare import declare as declare
from dpverify.integrations.jax_privacy._recorder import BatchRecording as BatchRecording
from dpverify.integrations.jax_privacy._recorder import record_batches as record_batches

__all__ = ["BatchRecording", "Declaration", "UnsupportedRun", "declare", "record_batches"]
