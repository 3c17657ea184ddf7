"""Model checkpoints: a small, documented equivalent of Orbax for one host.

File format (one file per checkpoint, ``RUN_DIR/checkpoints/step-NNNNNNNN.msgpack``):
the msgpack encoding (:func:`flax.serialization.msgpack_serialize`) of the state
dict (:func:`flax.serialization.to_state_dict`) of::

    {"format": "dpverify-checkpoint-v1",
     "step": s,              # logical steps completed = the next step to run
     "params": ...,          # model parameters after step s - 1
     "opt_state": ...,       # Optax state after step s - 1
     "rng": {"noise_key_digest": ..., "sampler": ...}}   # which randomness; no secret

Arrays are stored with their dtype and shape; namedtuple Optax states become
dicts keyed by position and are restored against a template built the same
way (model init + ``optimizer.init``), as :func:`flax.serialization.from_state_dict`
does.  Writes are atomic and durable: temp file, fsync, ``os.replace``,
directory fsync (the Orbax "commit" protocol reduced to one file), mode 0600.
The file's SHA-256 is returned and recorded in the ledger's ``Checkpoint``
record, so the auditor can tell a replayed checkpoint is the one the run wrote.

Write-ahead rule (enforced by the training loop, not here): the ledger records
of steps ``< s`` are flushed before checkpoint ``s`` is written.

Multi-process runs write Orbax checkpoint directories instead
(``step-NNNNNNNN.orbax/``, :mod:`trainers.checkpoint_orbax`).
:func:`load_checkpoint` and :func:`checkpoint_digest` read either format, so
a run's ledger may name both (a single-process run resumed with two
processes, or the reverse).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from dpverify.errors import UnusableInput
from trainers.noise_key import write_private_file

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "CheckpointState",
    "checkpoint_digest",
    "checkpoint_path",
    "file_digest",
    "is_intact",
    "load_checkpoint",
    "save_checkpoint",
]

#: Directory of checkpoint files inside a run directory.
CHECKPOINT_DIR = "checkpoints"
#: Format tag stored in every checkpoint file.
CHECKPOINT_FORMAT = "dpverify-checkpoint-v1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointState:
    """A restored checkpoint.

    Attributes:
        step: logical steps completed (the next step to run).
        params: model parameters (numpy arrays, template's tree structure).
        opt_state: optimiser state (template's tree structure).
        rng: public description of the run's randomness (no secrets).
        digest: SHA-256 hex digest of the file.
    """

    step: int
    params: Any
    opt_state: Any
    rng: dict
    digest: str


def checkpoint_path(step: int) -> str:
    """Path of checkpoint ``step`` relative to the run directory."""
    return f"{CHECKPOINT_DIR}/step-{int(step):08d}.msgpack"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_digest(path: str | os.PathLike) -> str:
    """The ledger digest of a checkpoint of either format.

    A file's SHA-256 (:func:`file_digest`), or an Orbax directory's
    :func:`trainers.checkpoint_orbax.tree_digest`.

    Raises:
        OSError / UnusableInput: it cannot be read.
    """
    if Path(path).is_dir():
        from trainers.checkpoint_orbax import tree_digest

        return tree_digest(path)
    return file_digest(path)


def is_intact(path: str | os.PathLike, digest: str) -> bool:
    """True when the checkpoint at ``path`` exists and has the ledger's ``digest``."""
    try:
        return checkpoint_digest(path) == digest
    except (OSError, UnusableInput):
        return False


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    params: Any,
    opt_state: Any,
    *,
    rng: dict | None = None,
) -> tuple[str, str]:
    """Write checkpoint ``step`` atomically.

    Args:
        run_dir: the run directory.
        step: logical steps completed.
        params: model parameters (any pytree of arrays).
        opt_state: Optax state.
        rng: public randomness description (e.g. ``noise_key_digest``); no secrets.

    Returns:
        ``(relative_path, sha256_hex)``.
    """
    import jax
    import numpy as np
    from flax import serialization

    state = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "params": jax.device_get(params),
        "opt_state": jax.device_get(opt_state),
        "rng": dict(rng or {}),
    }
    state_dict = serialization.to_state_dict(state)
    state_dict = jax.tree_util.tree_map(
        lambda a: np.asarray(a) if hasattr(a, "dtype") else a, state_dict
    )
    data = serialization.msgpack_serialize(state_dict)
    rel = checkpoint_path(step)
    write_private_file(Path(run_dir) / rel, data)
    return rel, hashlib.sha256(data).hexdigest()


def load_checkpoint(
    path: str | os.PathLike,
    *,
    params_template: Any,
    opt_state_template: Any,
    expected_digest: str | None = None,
) -> CheckpointState:
    """Read a checkpoint against templates of the parameter and optimiser trees.

    Args:
        path: the checkpoint file, or an Orbax checkpoint directory
            (:func:`trainers.checkpoint_orbax.load_orbax_checkpoint`).
        params_template: a pytree with the parameters' structure (values unused).
        opt_state_template: likewise for the optimiser state.
        expected_digest: the ``Checkpoint.digest`` from the ledger; checked when given.

    Raises:
        UnusableInput: missing file, digest mismatch, or not a dpverify checkpoint.
    """
    from flax import serialization

    path = Path(path)
    if path.is_dir():
        from trainers.checkpoint_orbax import load_orbax_checkpoint

        return load_orbax_checkpoint(
            path,
            params_template=params_template,
            opt_state_template=opt_state_template,
            expected_digest=expected_digest,
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnusableInput(f"checkpoint {path} cannot be read: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected_digest is not None and digest != expected_digest:
        raise UnusableInput(f"checkpoint {path} does not match its ledger digest")
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as exc:
        raise UnusableInput(f"checkpoint {path} is not readable msgpack: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise UnusableInput(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file")
    try:
        _check_fits(params_template, raw["params"])
        _check_fits(opt_state_template, raw["opt_state"])
        params = serialization.from_state_dict(params_template, raw["params"])
        opt_state = serialization.from_state_dict(opt_state_template, raw["opt_state"])
    except (KeyError, ValueError, TypeError) as exc:
        raise UnusableInput(f"checkpoint {path} does not fit the model/optimiser: {exc}") from None
    return CheckpointState(
        step=int(raw["step"]),
        params=params,
        opt_state=opt_state,
        rng=dict(raw.get("rng") or {}),
        digest=digest,
    )


def _check_fits(template: Any, stored: Any) -> None:
    """Raise ``ValueError`` unless ``stored`` has the template's keys and shapes.

    (:func:`flax.serialization.from_state_dict` alone ignores extra keys and
    does not compare shapes.)
    """
    import jax
    import numpy as np
    from flax import serialization

    want = serialization.to_state_dict(template)
    paths_w = jax.tree_util.tree_flatten_with_path(want)[0]
    paths_s = jax.tree_util.tree_flatten_with_path(stored)[0]
    keys_w = [jax.tree_util.keystr(k) for k, _ in paths_w]
    keys_s = [jax.tree_util.keystr(k) for k, _ in paths_s]
    if sorted(keys_w) != sorted(keys_s):
        raise ValueError(f"parameter names differ ({len(keys_s)} stored, {len(keys_w)} expected)")
    shapes = {jax.tree_util.keystr(k): np.shape(v) for k, v in paths_s}
    for k, v in paths_w:
        name = jax.tree_util.keystr(k)
        if shapes[name] != np.shape(v):
            raise ValueError(f"{name} has shape {shapes[name]}, expected {np.shape(v)}")
