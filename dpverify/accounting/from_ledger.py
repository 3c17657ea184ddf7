"""ε of a recorded run, straight from its ledger."""

from __future__ import annotations

from typing import Any

from dpverify._validate import check_probability
from dpverify.accounting.accountants import compute_epsilon
from dpverify.accounting.report import EpsilonReport
from dpverify.accounting.segments import _as_ledger, segments_from_ledger

__all__ = ["accounting_kwargs", "epsilon_from_ledger"]


def accounting_kwargs(header: Any) -> dict[str, Any]:
    """``neighbouring``, ``sampler`` and ``sampler_params`` (with ``dataset_size``) of a header."""
    params = dict(header.sampler_params or {})
    params.setdefault("dataset_size", header.dataset_size)
    return {
        "neighbouring": header.neighbouring,
        "sampler": header.sampler,
        "sampler_params": params,
    }


def epsilon_from_ledger(
    path_or_ledger: Any, delta: float | None = None, **kwargs: Any
) -> EpsilonReport:
    """ε of every executed step of a recorded run.

    Args:
        path_or_ledger: a run directory, a ledger directory or a read
            :class:`dpverify.ledger.Ledger`.
        delta: δ; defaults to the seal's δ, else the header's.
        **kwargs: passed to :func:`compute_epsilon` (e.g. ``accountants``).

    Returns:
        The :class:`EpsilonReport` under the run's declared sampler and
        neighbouring relation.

    Raises:
        UnusableInput, LedgerCorrupt: the ledger cannot be read.
        InvalidArgument: bad δ.
    """
    ledger = _as_ledger(path_or_ledger)
    header = ledger.header
    if delta is None:
        seal = getattr(ledger, "seal", None)
        delta = seal.delta if seal is not None and seal.delta is not None else header.delta
    delta = check_probability("delta", delta, allow_one=False)
    options = accounting_kwargs(header)
    options.update(kwargs)
    return compute_epsilon(segments_from_ledger(ledger), delta, **options)
