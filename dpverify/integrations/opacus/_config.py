"""Opacus's configuration translated into a dpverify run header, or refused.

What Opacus calls what (Opacus 1.x, ``PrivacyEngine.make_private``):

* sampling: ``poisson_sampling=True`` gives a ``DPDataLoader`` whose batch
  sampler is ``UniformWithReplacementSampler`` (each example independently
  with ``sample_rate`` q = 1/len(original loader)): dpverify's ``poisson``.
  ``poisson_sampling=False`` keeps the user's ``DataLoader``; with
  ``shuffle=True`` that is a fresh permutation per epoch cut into batches of
  ``batch_size`` B: dpverify's ``shuffle`` with q = B/N.  Opacus's accountant
  still accounts it as Poisson at 1/len(loader) — a claim the auditor refutes.
* ``max_grad_norm`` is the clip norm C (flat clipping over all trainable
  parameters); ``noise_multiplier`` is σ (noise std σ·C on the clipped sum).
* the denominator of the noisy mean is ``optimizer.expected_batch_size`` =
  int(q·N) (``loss_reduction="mean"``), or 1 (``"sum"``) — a public constant.

Refused, one line each: per-layer and adaptive clipping, ghost clipping,
distributed Opacus, secure mode (its noise cannot be replayed), sequential
(unshuffled) batches and samplers dpverify has no name for, an accountant that
already holds steps from before the recording.
"""

from __future__ import annotations

import platform
from typing import Any

from dpverify.integrations._errors import UnsupportedRun

__all__ = ["check_supported", "describe_sampling", "software_versions"]


def check_supported(privacy_engine: Any, optimizer: Any, data_loader: Any) -> None:
    """Raise :class:`UnsupportedRun` for what the recorder cannot certify."""
    import torch
    from opacus.optimizers import DPOptimizer

    if not isinstance(optimizer, DPOptimizer):
        raise UnsupportedRun(
            f"optimizer={type(optimizer).__name__} is not an Opacus DPOptimizer: pass the "
            "optimizer returned by PrivacyEngine.make_private"
        )
    refused = _refused_optimizers()
    for cls, why in refused:
        if isinstance(optimizer, cls):
            raise UnsupportedRun(f"{type(optimizer).__name__}: {why}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            raise UnsupportedRun(
                "distributed Opacus (world size > 1) is not supported: each worker samples its "
                "own shard; record a single-process run"
            )
    if getattr(privacy_engine, "secure_mode", False) or getattr(optimizer, "secure_mode", False):
        raise UnsupportedRun(
            "secure_mode=True draws noise from a CSPRNG that cannot be replayed; the recorder "
            "makes noise reproducible from the run's secret key instead (use secure_mode=False)"
        )
    if optimizer.loss_reduction not in ("mean", "sum"):
        raise UnsupportedRun(f"loss_reduction={optimizer.loss_reduction!r} is not mean or sum")
    accountant = getattr(privacy_engine, "accountant", None)
    if accountant is None:
        raise UnsupportedRun("privacy_engine has no accountant: pass the PrivacyEngine used")
    if len(accountant) > 0:
        raise UnsupportedRun(
            f"the privacy engine's accountant already holds {len(accountant)} step(s) from "
            "before the recording: record the run from its first step"
        )
    if getattr(data_loader, "batch_sampler", None) is None:
        raise UnsupportedRun("a data loader without a batch sampler cannot be recorded")


def _refused_optimizers() -> list[tuple[type, str]]:
    out: list[tuple[type, str]] = []

    def add(module: str, name: str, why: str) -> None:
        try:
            mod = __import__(module, fromlist=[name])
            out.append((getattr(mod, name), why))
        except (ImportError, AttributeError):  # older/newer Opacus without it
            pass

    add("opacus.optimizers", "DPPerLayerOptimizer",
        "per-layer clipping is not certified (the audit assumes one flat clip norm C); "
        "use clipping='flat'")  # fmt: skip
    add("opacus.optimizers", "AdaClipDPOptimizer",
        "adaptive clipping is not certified (its clip norm depends on private data and "
        "is accounted separately); use clipping='flat'")  # fmt: skip
    add("opacus.optimizers", "DistributedDPOptimizer",
        "distributed Opacus is not supported; record a single-process run")
    add("opacus.optimizers", "DistributedPerLayerOptimizer",
        "distributed per-layer clipping is not supported; use clipping='flat' in one process")
    add("opacus.optimizers", "DPOptimizerFastGradientClipping",
        "ghost clipping (grad_sample_mode='ghost') is not supported by the recorder yet: "
        "per-example norms are not observable; use the default grad_sample_mode='hooks'")
    return out


def describe_sampling(data_loader: Any) -> dict[str, Any]:
    """Name the sampling Opacus's data loader really does.

    Returns:
        ``{"sampler", "sampler_params", "sampling_rate", "dataset_size",
        "opacus_sample_rate"}`` (q as dpverify's sampler defines it, and the q
        Opacus's accountant uses).

    Raises:
        UnsupportedRun: a sampler dpverify has no name for.
    """
    from opacus.utils.uniform_sampler import (
        DistributedUniformWithReplacementSampler,
        UniformWithReplacementSampler,
    )
    from torch.utils.data import BatchSampler, RandomSampler

    n = len(data_loader.dataset)
    bs = data_loader.batch_sampler
    if isinstance(bs, DistributedUniformWithReplacementSampler):
        raise UnsupportedRun("distributed Poisson sampling is not supported; record one process")
    if isinstance(bs, UniformWithReplacementSampler):
        if bs.num_samples != n:
            raise UnsupportedRun(
                f"the Poisson sampler draws from {bs.num_samples} examples but the data set has "
                f"{n}"
            )
        q = float(bs.sample_rate)
        return {"sampler": "poisson", "sampler_params": {}, "sampling_rate": q,
                "dataset_size": n, "opacus_sample_rate": q}  # fmt: skip
    if isinstance(bs, BatchSampler):
        inner = bs.sampler
        if isinstance(inner, RandomSampler) and not inner.replacement and (
            inner._num_samples is None or inner._num_samples == n
        ):
            b = int(bs.batch_size)
            if b > n:
                raise UnsupportedRun(f"batch_size={b} exceeds the data set size {n}")
            return {"sampler": "shuffle", "sampler_params": {"batch_size": b},
                    "sampling_rate": b / n, "dataset_size": n,
                    "opacus_sample_rate": 1.0 / len(data_loader)}  # fmt: skip
        raise UnsupportedRun(
            f"batches from {type(inner).__name__} (poisson_sampling=False without shuffle=True) "
            "are not a sampler dpverify can name; use poisson_sampling=True"
        )
    raise UnsupportedRun(
        f"batch sampler {type(bs).__name__} is not recognised: use the DPDataLoader from "
        "PrivacyEngine.make_private (poisson_sampling=True)"
    )


def software_versions() -> dict[str, str]:
    import opacus
    import torch

    import dpverify

    return {"dpverify": dpverify.__version__, "opacus": opacus.__version__,
            "torch": torch.__version__, "python": platform.python_version()}  # fmt: skip
