"""dpverify: make the privacy claim of a differentially private training run checkable.

Importing this package is cheap and never initialises JAX: the ledger, samplers,
statistics, accounting and CLI are plain NumPy/SciPy code.  JAX is only imported
by :mod:`trainers` (and by :mod:`audits` when it replays steps).

Subpackages (import them explicitly):

* :mod:`dpverify.ledger` — the append-only, hash-chained run ledger.
* :mod:`dpverify.samplers` — Poisson and shortcut batch samplers.
* :mod:`dpverify.stats` — the Poisson-compliance test battery.
* :mod:`dpverify.accounting` — ε with RDP, PLD and PRV accountants.
* :mod:`dpverify.testing` — Hypothesis strategies and ``check_sampler``.
"""

from dpverify.errors import (
    DpverifyError as DpverifyError,
)
from dpverify.errors import (
    InvalidArgument as InvalidArgument,
)
from dpverify.errors import (
    LedgerCorrupt as LedgerCorrupt,
)
from dpverify.errors import (
    LedgerError as LedgerError,
)
from dpverify.errors import (
    LedgerLocked as LedgerLocked,
)
from dpverify.errors import (
    UnusableInput as UnusableInput,
)

__version__ = "0.1.0"
