"""Checkpoints of multi-process runs: Orbax directories and their tree digest.

A run of P > 1 processes (:mod:`trainers.multiprocess`) holds its parameters
and optimiser state as global ``jax.Array`` values: replicated today, sharded
across processes by a trainer that shards them.  Such state is saved with
Orbax (``orbax-checkpoint``), which every process takes part in: each process
writes the shards its devices own (one copy of each replicated shard), Orbax's
coordinator (process 0) merges the per-process OCDBT manifests and commits the
checkpoint by renaming its temporary directory — the checkpoint either exists
whole under its final name or not at all.

Layout (``RUN_DIR/checkpoints/step-NNNNNNNN.orbax/``, an Orbax composite)::

    state/    the pytree {"params": ..., "opt_state": ...} (StandardSave)
    meta/     JSON {"format": "dpverify-checkpoint-orbax-v1", "step": s,
                    "rng": {"noise_key_digest": ..., "sampler": ...}}
    ...       Orbax's own metadata and commit markers

Digest: the ledger's ``Checkpoint.digest`` of such a checkpoint is
:func:`tree_digest` of the committed directory — SHA-256 over every file's
relative path, size and SHA-256 in path order (and every sub-directory's
path).  It is computed by process 0 after every process has finished the
save, and recomputed by whoever reads the checkpoint (a resume, the auditor's
replay) with nothing but ``hashlib``: no JAX distributed runtime is needed to
tell whether a checkpoint directory is the one the run recorded, and any
change to any file of it — a shard, a manifest, the metadata — changes the
digest.  Symbolic links and other non-regular files are refused.

Durability: Orbax commits by rename but does not promise ``fsync``; process 0
fsyncs every file and directory of the committed checkpoint (and the
``checkpoints/`` directory) before the digest is returned, so the ledger's
``Checkpoint`` record is never durable before the checkpoint it names.  Files
are made private (0600, directories 0700) as the single-file format's are.

Reading needs no distributed runtime either: :func:`load_orbax_checkpoint`
restores every array whole into host memory (NumPy) against a template, in one
process, whatever process count wrote it — which is what lets a job be resumed
with a different number of processes, and the auditor replay it.

Multi-host use needs a file system every process sees at the same path
(Orbax's requirement); the loopback jobs of ``dpverify launch`` share one.

References: Orbax checkpointing (orbax.readthedocs.io, "Checkpointing
PyTrees of jax.Arrays"; multi-host atomic commit); the OCDBT driver of
TensorStore (google.github.io/tensorstore).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from dpverify.errors import UnusableInput

__all__ = [
    "ORBAX_FORMAT",
    "load_orbax_checkpoint",
    "orbax_checkpoint_path",
    "save_orbax_checkpoint",
    "tree_digest",
]

#: Format tag stored in every Orbax checkpoint's ``meta`` item.
ORBAX_FORMAT = "dpverify-checkpoint-orbax-v1"
_TREE_TAG = b"dpverify-checkpoint-tree-v1\n"


def orbax_checkpoint_path(step: int) -> str:
    """Path of Orbax checkpoint ``step`` relative to the run directory."""
    return f"checkpoints/step-{int(step):08d}.orbax"


def _entries(root: Path) -> list[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of every entry under ``root``, sorted; refuses links."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnusableInput(
                    f"checkpoint {root.name}: {path.relative_to(root).as_posix()} is not a "
                    "regular file or directory"
                )
            out.append((path.relative_to(root).as_posix(), path))
    out.sort()
    return out


def tree_digest(root: str | os.PathLike, *, sync: bool = False) -> str:
    """SHA-256 hex digest of a checkpoint directory (see the module docstring).

    The hash covers, in sorted relative-path order, ``D <path>\\n`` for every
    sub-directory and ``F <path> <size> <sha256 of bytes>\\n`` for every
    regular file, after the tag ``dpverify-checkpoint-tree-v1``.

    Args:
        root: the checkpoint directory.
        sync: also fsync every file and directory (and ``root``'s parent).

    Raises:
        UnusableInput: ``root`` is not a directory, cannot be read, or holds
            a symbolic link or special file.
    """
    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        raise UnusableInput(f"checkpoint {root} is not a checkpoint directory")
    h = hashlib.sha256(_TREE_TAG)
    try:
        for rel, path in _entries(root):
            if path.is_dir():
                h.update(f"D {rel}\n".encode())
                if sync:
                    _fsync(path)
                continue
            fh = hashlib.sha256()
            size = 0
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    fh.update(chunk)
                    size += len(chunk)
                if sync:
                    os.fsync(f.fileno())
            h.update(f"F {rel} {size} {fh.hexdigest()}\n".encode())
        if sync:
            _fsync(root)
            _fsync(root.parent)
    except OSError as exc:
        raise UnusableInput(f"checkpoint {root} cannot be read: {exc.strerror}") from None
    return h.hexdigest()


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private(root: Path) -> None:
    for _, path in _entries(root):
        path.chmod(0o700 if path.is_dir() else 0o600)
    root.chmod(0o700)


def _as_global(tree: Any) -> Any:
    """Host values (identical on every process) as replicated global arrays.

    Global arrays — replicated or sharded across processes — are kept as they
    are: Orbax writes each process's own shards.
    """
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from trainers.distributed import put_global

    if jax.process_count() == 1:
        return tree
    mesh = Mesh(np.array(jax.devices()), ("processes",))
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return leaf
        return put_global(np.asarray(jax.device_get(leaf)), replicated)

    return jax.tree_util.tree_map(one, tree)


def save_orbax_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    params: Any,
    opt_state: Any,
    *,
    rng: dict | None = None,
) -> tuple[str, str | None]:
    """Write Orbax checkpoint ``step``; called by EVERY process of the job.

    Returns when the checkpoint is committed on all processes.  Process 0
    then makes it private and durable and returns ``(relative_path,
    tree_digest)``; the other processes return ``(relative_path, None)``.
    An uncommitted (or unrecorded) directory of the same step, left by a
    killed job, is replaced.

    Args:
        run_dir: the run directory (the same path on every process).
        step: logical steps completed.
        params: model parameters: global ``jax.Array`` values (any sharding)
            or host values identical on every process.
        opt_state: Optax state, likewise.
        rng: public randomness description; no secrets.
    """
    import jax
    import orbax.checkpoint as ocp

    rel = orbax_checkpoint_path(step)
    path = (Path(run_dir) / rel).absolute()
    if jax.process_index() == 0:  # as the single-process writer makes it
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = _as_global({"params": params, "opt_state": opt_state})
    meta = {"format": ORBAX_FORMAT, "step": int(step), "rng": dict(rng or {})}
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    checkpointer.save(
        path,
        ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    if jax.process_index() != 0:
        return rel, None
    _make_private(path)
    return rel, tree_digest(path, sync=True)


def load_orbax_checkpoint(
    path: str | os.PathLike,
    *,
    params_template: Any,
    opt_state_template: Any,
    expected_digest: str | None = None,
) -> Any:
    """Restore an Orbax checkpoint whole into host memory, in this process alone.

    Works in a single-process program and on any one process of a job (no
    other process takes part); the arrays come back as NumPy arrays with the
    templates' tree structure.

    Returns:
        :class:`trainers.checkpoint.CheckpointState` (``digest`` = :func:`tree_digest`).

    Raises:
        UnusableInput: missing or uncommitted directory, digest mismatch, not
            a dpverify Orbax checkpoint, or not fitting the templates.
    """
    import jax
    import numpy as np

    from trainers.checkpoint import CheckpointState

    path = Path(path).absolute()
    digest = tree_digest(path)
    if expected_digest is not None and digest != expected_digest:
        raise UnusableInput(f"checkpoint {path} does not match its ledger digest")
    template = jax.tree_util.tree_map(
        lambda a: np.zeros(np.shape(a), np.asarray(a).dtype),
        {"params": params_template, "opt_state": opt_state_template},
    )
    try:
        import orbax.checkpoint as ocp

        me = jax.process_index()
        checkpointer = ocp.Checkpointer(
            ocp.CompositeCheckpointHandler(),
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}
            ),
        )
        restored = checkpointer.restore(
            path,
            ocp.args.Composite(
                state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()
            ),
        )
        meta, state = restored["meta"], restored["state"]
    except Exception as exc:  # Orbax/TensorStore raise many types for a damaged directory
        text = " ".join(str(exc).split())[:200]
        raise UnusableInput(
            f"checkpoint {path} is not a readable Orbax checkpoint: {text}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != ORBAX_FORMAT:
        raise UnusableInput(f"checkpoint {path} is not a {ORBAX_FORMAT} checkpoint")
    state = jax.tree_util.tree_map(np.asarray, state)
    try:
        _check_same(template, state)
    except ValueError as exc:
        raise UnusableInput(f"checkpoint {path} does not fit the model/optimiser: {exc}") from None
    return CheckpointState(
        step=int(meta["step"]),
        params=state["params"],
        opt_state=state["opt_state"],
        rng=dict(meta.get("rng") or {}),
        digest=digest,
    )


def _check_same(template: Any, restored: Any) -> None:
    """Raise ``ValueError`` unless both trees have the same paths, shapes and dtypes.

    (Orbax restores an array with its stored shape whatever the template says.)
    """
    import jax
    import numpy as np

    want = jax.tree_util.tree_flatten_with_path(template)[0]
    got = jax.tree_util.tree_flatten_with_path(restored)[0]
    names_w = [jax.tree_util.keystr(k) for k, _ in want]
    names_g = [jax.tree_util.keystr(k) for k, _ in got]
    if names_w != names_g:
        raise ValueError(f"parameter names differ ({len(names_g)} stored, {len(names_w)} expected)")
    for (k, w), (_, g) in zip(want, got, strict=True):
        if np.shape(w) != np.shape(g) or np.asarray(w).dtype != np.asarray(g).dtype:
            raise ValueError(
                f"{jax.tree_util.keystr(k)} has shape {np.shape(g)} {np.asarray(g).dtype}, "
                f"expected {np.shape(w)} {np.asarray(w).dtype}"
            )
