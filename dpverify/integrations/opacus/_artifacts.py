"""Files an Opacus recording writes besides the ledger.

Layout of ``RUN_DIR`` (the same names as dpverify's own trainer where they overlap):

* ``noise.key`` — 32 secret random bytes (mode 0600); the header holds only
  their SHA-256.  Step t's noise comes from a ``torch.Generator`` seeded with
  the first 8 bytes (little-endian, top bit cleared) of
  SHA-256(``b"dpverify/opacus-noise/v1"`` ‖ key ‖ t as 8 little-endian bytes).
  torch's CPU generator (MT19937, 63-bit seed) is not a CSPRNG: the noise is as
  unpredictable as the key only to someone who cannot search 2⁶³ seeds.
* ``checkpoints/step_NNNNNN.pt`` — ``torch.save`` of plain tensors only
  (``{"model": state_dict, "optimizer": state_dict, "step": t}``), loadable
  with ``weights_only=True``; SHA-256 digests in the ledger.
* ``opacus/model.pt2`` — the model as a ``torch.export`` program (ATen graph,
  no pickled code), so the auditor rebuilds it without the user's classes and
  without running code from the run directory.
* ``opacus/data.pt`` — the training data as tensors (mode 0600: it is the
  private data set), fingerprinted in the header.
"""

from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path
from typing import Any

from dpverify.private_files import create_noise_key
from dpverify.private_files import write_private_file as write_private

__all__ = [
    "NOISE_DOMAIN",
    "checkpoint_relpath",
    "create_noise_key",
    "export_model",
    "noise_generator",
    "save_checkpoint",
    "snapshot_data",
    "write_private",
]

#: Domain-separation prefix of the per-step noise seed (versioned).
NOISE_DOMAIN = b"dpverify/opacus-noise/v1"


def noise_generator(key: bytes, step: int) -> Any:
    """The torch.Generator that draws logical step ``step``'s noise."""
    import torch

    digest = hashlib.sha256(NOISE_DOMAIN + key + int(step).to_bytes(8, "little")).digest()
    seed = int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    return torch.Generator().manual_seed(seed)


def checkpoint_relpath(step: int) -> str:
    return f"checkpoints/step_{step:06d}.pt"


def save_checkpoint(run_dir: Path, step: int, module: Any, optimizer: Any) -> tuple[str, str]:
    """Save model and optimiser state after ``step`` steps; returns ``(relpath, sha256)``."""
    import torch

    state = {
        "model": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "step": int(step),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    rel = checkpoint_relpath(step)
    write_private(run_dir / rel, data)
    return rel, hashlib.sha256(data).hexdigest()


def export_model(run_dir: Path, module: Any, example_input: Any) -> tuple[str | None, str]:
    """Export a hook-free copy of ``module``.

    Returns:
        ``(relpath, sha256 hex)``, or ``(None, why)`` when it cannot be exported.
    """
    import torch

    clone = copy.deepcopy(module)
    for sub in clone.modules():  # Opacus's grad-sample hooks are not part of the model
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
        sub._backward_hooks.clear()
        if hasattr(sub, "_backward_pre_hooks"):
            sub._backward_pre_hooks.clear()
    clone.train(module.training)
    x = example_input
    if x.shape[0] < 2:
        x = torch.cat([x, x])[:2]
    try:
        program = torch.export.export(
            clone, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
        buf = io.BytesIO()
        torch.export.save(program, buf)
    except Exception as exc:  # any model torch.export cannot capture: replay says why
        return None, f"torch.export could not capture the model ({type(exc).__name__})"
    rel = "opacus/model.pt2"
    data = buf.getvalue()
    write_private(run_dir / rel, data)
    return rel, hashlib.sha256(data).hexdigest()


def snapshot_data(run_dir: Path, dataset: Any) -> tuple[str | None, str | None, str]:
    """Save the (input, target) tensors of ``dataset``; returns ``(relpath, fingerprint, why)``."""
    import torch
    from torch.utils.data import TensorDataset

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
    else:
        try:
            items = [dataset[i] for i in range(len(dataset))]
            if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
                return None, None, "dataset items are not (input, target) pairs"
            x = torch.stack([torch.as_tensor(it[0]) for it in items])
            y = torch.stack([torch.as_tensor(it[1]) for it in items])
        except Exception as exc:
            return None, None, f"the dataset could not be read as tensors ({type(exc).__name__})"
    x, y = x.detach().cpu().contiguous(), y.detach().cpu().contiguous()
    h = hashlib.sha256()
    for t in (x, y):
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    buf = io.BytesIO()
    torch.save({"x": x, "y": y}, buf)
    rel = "opacus/data.pt"
    write_private(run_dir / rel, buf.getvalue())
    return rel, h.hexdigest(), "saved"
