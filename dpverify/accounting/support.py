"""Which accountant can bound which sampler under which neighbouring relation.

The libraries' events (dp-accounting ``dp_event``) and what each accountant
supports, as verified against dp-accounting 0.6.0 / prv-accountant 0.2.0
(``tests/accounting/test_support.py`` pins it with the libraries' own
``supports``):

===================  ===========  =========================================  ===============
sampler              relation     event                                      accountants
===================  ===========  =========================================  ===============
poisson              add_remove   PoissonSampled(q, Gaussian(σ))             RDP, PLD, PRV
poisson              replace_one  PoissonSampled(q, Gaussian(σ))             PLD
cyclic_poisson (b)   add_remove   PoissonSampled(b·q, Gaussian(σ)) ×⌈T/b⌉    RDP, PLD, PRV
cyclic_poisson (b)   replace_one  PoissonSampled(b·q, Gaussian(σ)) ×⌈T/b⌉    PLD
truncated_poisson    either       TruncatedSubsampledGaussian(N, q, cap, σ)  PLD
fixed_size           replace_one  SampledWithoutReplacement(N, B, Gauss(σ))  RDP
fixed_size           add_remove   —                                          none
shuffle, shuffle_binomial, balls_in_bins, other   —                         none (upper)
===================  ===========  =========================================  ===============

RDP has no Poisson-subsampled event under replace-one; PRV's
``PoissonSubsampledGaussianMechanism`` is the add/remove privacy random
variable only; sampling without replacement has an RDP bound only under
replace-one (Wang, Balle & Kasiviswanathan 2019).  Shuffled batches have no
upper bound in these libraries: see :func:`dpverify.accounting.shuffle_lower_bound`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpverify._validate import check_choice, check_int
from dpverify.errors import InvalidArgument

__all__ = [
    "ACCOUNTANTS",
    "NEIGHBOURING_RELATIONS",
    "NO_UPPER_BOUND_SAMPLERS",
    "SUPPORTED",
    "accounting_kind",
    "unsupported_reason",
]

#: Accountant names, in report order.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld", "prv")

#: Neighbouring relations (the ledger header's ``neighbouring`` field).
NEIGHBOURING_RELATIONS: tuple[str, ...] = ("add_remove", "replace_one")

#: Samplers for which no accountant here gives an upper bound on ε.
NO_UPPER_BOUND_SAMPLERS: tuple[str, ...] = ("shuffle", "shuffle_binomial", "balls_in_bins")

#: (accounting kind, relation) -> accountants that give an upper bound.
SUPPORTED: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("poisson", "add_remove"): ("rdp", "pld", "prv"),
    ("poisson", "replace_one"): ("pld",),
    ("cyclic_poisson", "add_remove"): ("rdp", "pld", "prv"),
    ("cyclic_poisson", "replace_one"): ("pld",),
    ("truncated_poisson", "add_remove"): ("pld",),
    ("truncated_poisson", "replace_one"): ("pld",),
    ("fixed_size", "replace_one"): ("rdp",),
    ("fixed_size", "add_remove"): (),
}

_KINDS = {
    "poisson": "poisson",
    "cyclic_poisson": "cyclic_poisson",
    "truncated_poisson": "truncated_poisson",
    "fixed_size": "fixed_size",
    "fixed_size_without_replacement": "fixed_size",
}


def accounting_kind(sampler: str) -> str:
    """The accounting event family of a sampler name (``"unknown"`` if none applies)."""
    if isinstance(sampler, str):
        sampler = sampler.lower()
    if sampler in _KINDS:
        return _KINDS[sampler]
    if sampler in NO_UPPER_BOUND_SAMPLERS:
        return sampler
    return "unknown"


def unsupported_reason(accountant: str, sampler: str, neighbouring: str) -> str | None:
    """Why ``accountant`` cannot bound ε for ``sampler`` under ``neighbouring``; None if it can."""
    check_choice("accountant", accountant, ACCOUNTANTS)
    check_choice("neighbouring", neighbouring, NEIGHBOURING_RELATIONS)
    kind = accounting_kind(sampler)
    if kind in NO_UPPER_BOUND_SAMPLERS:
        return (
            f"no accountant gives an upper bound for sampler {sampler!r} "
            f"(dp-accounting, prv-accountant): batches are not independently subsampled, "
            f"so the Poisson ε does not apply"
        )
    if kind == "unknown":
        return f"sampler {sampler!r} declares no accounting event this accountant knows"
    supported = SUPPORTED[(kind, neighbouring)]
    if accountant in supported:
        return None
    if not supported:
        return (
            f"no accountant supports sampler {sampler!r} under {neighbouring} neighbouring "
            f"(sampling without replacement is accountable by RDP under replace_one only)"
        )
    return (
        f"{accountant.upper()} does not support sampler {sampler!r} under {neighbouring} "
        f"neighbouring (supported: {', '.join(a.upper() for a in supported)})"
    )


def sampler_sizes(
    sampler: str, sampling_rate: float, params: Mapping[str, Any] | None
) -> dict[str, int]:
    """The integer sizes an event needs (``dataset_size``, ``cap``, ``batch_size``).

    Args:
        sampler: sampler name.
        sampling_rate: q.
        params: ``sampler_params`` plus ``dataset_size`` (the header's N).

    Raises:
        InvalidArgument: a needed size is missing or invalid.
    """
    params = dict(params or {})
    kind = accounting_kind(sampler)
    out: dict[str, int] = {}
    if kind in ("truncated_poisson", "fixed_size"):
        if params.get("dataset_size") is None:
            raise InvalidArgument(f"sampler {sampler!r} needs sampler_params['dataset_size']")
        out["dataset_size"] = check_int("dataset_size", params["dataset_size"], minimum=1)
    if kind == "truncated_poisson":
        if params.get("cap") is None:
            raise InvalidArgument("sampler 'truncated_poisson' needs sampler_params['cap']")
        out["cap"] = check_int("cap", params["cap"], minimum=1)
    if kind == "fixed_size":
        size = params.get("batch_size", params.get("sample_size"))
        if size is None:
            size = max(1, round(sampling_rate * out["dataset_size"]))
        out["batch_size"] = check_int("batch_size", size, minimum=1)
        if out["batch_size"] > out["dataset_size"]:
            raise InvalidArgument(
                f"batch_size={out['batch_size']} must be <= dataset_size={out['dataset_size']}"
            )
    return out
