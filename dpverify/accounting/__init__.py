"""ε from what a run actually executed, with RDP, PLD and PRV side by side.

Public API:

* :class:`Segment`, :func:`segments_from_ledger` — executed steps as (q, σ, steps)
  runs (steps repeated after a resume count again).
* :func:`compute_epsilon` → :class:`EpsilonReport` (each accountant an
  :class:`AccountantResult`); :func:`compute_delta` → :class:`DeltaReport`;
  :func:`epsilon_from_ledger`.
* :func:`epsilon_poisson` (cached; RDP is cheap enough for progress bars) and
  :func:`calibrate_noise_multiplier`.
* :func:`check_claim` → :class:`ClaimResult`.
* :func:`shuffle_lower_bound`: shuffled batches have no upper bound here, only
  this lower bound (after Chua et al., ICML 2024).
* :mod:`~dpverify.accounting.support`: which accountant supports which sampler
  under which neighbouring relation.

Importing this package is cheap: dp-accounting and prv-accountant are imported
when first used.  Details and tolerances: ``docs/accounting.md``.
"""

from dpverify.accounting.accountants import (
    DEFAULT_PLD_DISCRETIZATION as DEFAULT_PLD_DISCRETIZATION,
)
from dpverify.accounting.accountants import (
    DEFAULT_PRV_EPS_ERROR as DEFAULT_PRV_EPS_ERROR,
)
from dpverify.accounting.accountants import (
    TF_PRIVACY_ORDERS as TF_PRIVACY_ORDERS,
)
from dpverify.accounting.accountants import (
    build_event as build_event,
)
from dpverify.accounting.accountants import (
    compute_delta as compute_delta,
)
from dpverify.accounting.accountants import (
    compute_epsilon as compute_epsilon,
)
from dpverify.accounting.calibration import (
    calibrate_noise_multiplier as calibrate_noise_multiplier,
)
from dpverify.accounting.calibration import (
    epsilon_poisson as epsilon_poisson,
)
from dpverify.accounting.claims import (
    ClaimResult as ClaimResult,
)
from dpverify.accounting.claims import (
    check_claim as check_claim,
)
from dpverify.accounting.from_ledger import (
    accounting_kwargs as accounting_kwargs,
)
from dpverify.accounting.from_ledger import (
    epsilon_from_ledger as epsilon_from_ledger,
)
from dpverify.accounting.report import (
    AccountantResult as AccountantResult,
)
from dpverify.accounting.report import (
    DeltaReport as DeltaReport,
)
from dpverify.accounting.report import (
    EpsilonReport as EpsilonReport,
)
from dpverify.accounting.segments import (
    Segment as Segment,
)
from dpverify.accounting.segments import (
    merge_segments as merge_segments,
)
from dpverify.accounting.segments import (
    segments_from_ledger as segments_from_ledger,
)
from dpverify.accounting.shuffle import (
    shuffle_lower_bound as shuffle_lower_bound,
)
from dpverify.accounting.support import (
    ACCOUNTANTS as ACCOUNTANTS,
)
from dpverify.accounting.support import (
    NO_UPPER_BOUND_SAMPLERS as NO_UPPER_BOUND_SAMPLERS,
)
from dpverify.accounting.support import (
    unsupported_reason as unsupported_reason,
)
