"""Opening a training session: a new run directory, or a resumed one.

A :class:`Session` holds everything the loop in :mod:`trainers.loop` needs:
the plan, data, model state, sampler, noise key and the open ledger writer.
:func:`open_new` creates the run directory (secrets first, then the ledger
header, then checkpoint 0); :func:`open_resume` reopens it at the last intact
checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dpverify.errors import InvalidArgument, UnusableInput
from trainers.run_plan import DEFAULT_TASK, RunPlan, TrainConfig

__all__ = ["Session", "load_dataset", "make_sampler", "open_new", "open_resume"]

_CONFIG_FILE = "config.json"
_SUMMARY_FILE = "summary.json"
_LEDGER_DIR = "ledger"


@dataclasses.dataclass(kw_only=True)
class Session:
    """State of one training session (mutable: the loop advances it)."""

    run_dir: Path
    plan: RunPlan
    private: dict
    dataset: Any
    sampler: Any
    model_apply: Any
    optimizer: Any
    params: Any
    opt_state: Any
    noise_key: bytes
    noise_key_digest: str
    writer: Any
    start_step: int
    executed_before: int
    resumed: bool
    sealed_summary: dict | None = None
    canaries: Any = None  # trainers.canaries.TrainingCanaries when the run has canaries
    devices: Any = None
    streams: int | None = None  # MaskedDPSGD(streams=…): a speed setting of this session
    created_dir: bool = False  # open_new made run_dir (discard() may remove it)
    #: False on processes 1..P-1 of a multi-process job (they write nothing).
    leader: bool = True
    #: True once the session is shared by the P processes of a job
    #: (:mod:`trainers.multiprocess`): checkpoints end with a barrier.
    shared: bool = False
    #: What ``plan.clipping`` resolved to ("vmap" or "ghost") and why.
    clipping: str = "vmap"
    clipping_reason: str = ""

    def discard(self) -> None:
        """Remove a new run that failed before its first step (nothing was trained).

        Its ledger holds no step and its checkpoint the initial parameters:
        nothing private was used, and a rerun of the same command must not be
        blocked by it.  Only the files :func:`open_new` created are removed,
        and only by the process that created them (process 0 of a job).
        """
        if not self.resumed and self.leader:
            _remove_partial_run(self.run_dir, self.created_dir)

    @property
    def sampler_label(self) -> str:
        """The sampler's name, marked when it is a shortcut."""
        name = self.sampler.name
        return name if getattr(self.sampler, "is_poisson", False) else f"{name}: SHORTCUT"

    def make_trainer(self) -> Any:
        """The masked DP-SGD trainer of this run (compiles on its first step)."""
        from trainers.dpsgd import DPSGDConfig, MaskedDPSGD

        plan = self.plan
        cfg = DPSGDConfig(
            clip_norm=plan.clip_norm,
            noise_multiplier=plan.noise_multiplier,
            denominator=plan.expected_batch_size,
            physical_batch_size=plan.physical_batch_size,
            precision=plan.precision,
            mutation=self.private.get("mutation"),
            clipping=self.clipping,
        )
        return MaskedDPSGD(
            self.model_apply, self.optimizer, cfg, devices=self.devices, streams=self.streams
        )

    def checkpoint(self, step: int, params: Any, opt_state: Any) -> None:
        """Write-ahead checkpoint: flush the ledger, save the checkpoint, record it.

        A single-process run writes one msgpack file
        (:func:`trainers.checkpoint.save_checkpoint`).  In a multi-process job
        every process calls this at the same step: process 0 flushes the
        ledger, then ALL processes write the Orbax checkpoint together
        (:func:`trainers.checkpoint_orbax.save_orbax_checkpoint`: each writes
        its own shards; it returns once the checkpoint is committed), then
        process 0 makes it durable, digests it and records it, and every
        process waits at a barrier, so none runs a step past a checkpoint that
        is not durable and recorded.
        """
        from dpverify.ledger import Checkpoint

        rng = {"noise_key_digest": self.noise_key_digest, "sampler": self.plan.declared_sampler}
        if self.shared:
            self._shared_checkpoint(step, params, opt_state, rng)
            return
        from trainers.checkpoint import save_checkpoint

        self.writer.flush()
        rel, digest = save_checkpoint(self.run_dir, step, params, opt_state, rng=rng)
        self.writer.append(Checkpoint(step=step, digest=digest, path=rel))  # committed now

    def _shared_checkpoint(self, step: int, params: Any, opt_state: Any, rng: dict) -> None:
        from dpverify.errors import DpverifyError
        from dpverify.ledger import Checkpoint
        from trainers.checkpoint_orbax import save_orbax_checkpoint
        from trainers.distributed import PeerFailed, barrier

        if self.leader:
            self.writer.flush()  # before any process writes a byte of checkpoint `step`
        try:
            rel, digest = save_orbax_checkpoint(self.run_dir, step, params, opt_state, rng=rng)
        except DpverifyError:
            raise
        except Exception as exc:  # a failed Orbax barrier: another process stopped
            import jax

            text = " ".join(str(exc).split())[:200]
            raise PeerFailed(
                f"process {jax.process_index()}: checkpoint {step} failed "
                f"({type(exc).__name__}: {text}); another process of the job probably "
                "stopped. Every recorded step is kept: rerun the same command with --resume"
            ) from None
        if self.leader:
            if digest is None:  # unreachable: process 0 digests what it committed
                raise RuntimeError(f"checkpoint {step}: process 0 computed no digest")
            self.writer.append(Checkpoint(step=step, digest=digest, path=rel))  # committed now
        barrier(f"dpverify-checkpoint-{step}")

    def claim(self, steps: int) -> float | None:
        """Claimed ε (PLD, Poisson) at the plan's δ after ``steps`` executed steps."""
        return _claim(self.plan, steps)

    def epsilon_report(self, steps: int) -> dict | None:
        """ε per accountant (RDP, PLD, PRV) over ``steps`` executed steps, as JSON."""
        if self.plan.noise_multiplier <= 0:
            return None
        from dpverify.accounting import Segment, compute_epsilon

        seg = Segment(
            sampling_rate=self.plan.sampling_rate,
            noise_multiplier=self.plan.noise_multiplier,
            steps=steps,
        )
        return compute_epsilon([seg], self.plan.delta).to_json()


def resolve_run_clipping(
    plan: RunPlan, comps: Any, dataset: Any, devices: int | None = None
) -> tuple[str, str]:
    """``(method, reason)``: what ``plan.clipping`` resolves to for this model
    and data on ``devices`` devices of this process (every device of every
    process in a multi-process run) (:func:`trainers.clipping.select.resolve_clipping`; under ``auto`` two
    compilations of the clipping part, nothing run).
    The method is recorded in the header's ``extra.clipping``."""
    import jax

    from trainers.clipping.select import resolve_clipping
    from trainers.dpsgd import trainable_leaves
    from trainers.losses import softmax_cross_entropy

    x0, y0 = dataset.x_train[0], dataset.y_train[0]
    method, _, reason = resolve_clipping(
        plan.clipping,
        model_apply=comps.model_apply,
        loss_fn=softmax_cross_entropy,
        trainable=trainable_leaves(comps.params),
        precision=plan.precision,
        params=comps.params,
        x_one=jax.ShapeDtypeStruct(x0.shape, x0.dtype),
        devices=jax.device_count() if jax.process_count() > 1 else (devices or 1),
        physical_batch_size=plan.physical_batch_size,
        y_one=jax.ShapeDtypeStruct(y0.shape, y0.dtype),
    )
    return method, reason


def _claim(plan: RunPlan, steps: int) -> float | None:
    if plan.noise_multiplier <= 0:
        return None
    from dpverify.accounting import epsilon_poisson

    eps = float(
        epsilon_poisson(plan.sampling_rate, plan.noise_multiplier, steps, plan.delta, "pld")
    )
    return eps if math.isfinite(eps) else None


def load_dataset(task_name: str, data_path: str | None) -> Any:
    """The task's data set (from ``data_path`` where the task needs files)."""
    from trainers.tasks import get_task

    task = get_task(task_name)
    if task.needs_data_path and data_path is None:
        raise InvalidArgument(f"task={task_name!r} needs local data: pass --data PATH")
    if not task.needs_data_path and data_path is not None:
        raise InvalidArgument(
            f"task={task_name!r} uses its embedded data set and reads no files: drop --data"
        )
    return task.load_data(data_path)


def make_sampler(name: str, dataset_size: int, sampling_rate: float, seed: int, params: dict):
    """The sampler called ``name`` (:func:`dpverify.samplers.make_sampler`)."""
    if name == "truncated_poisson" and "cap" not in params:
        raise InvalidArgument(
            "sampler='truncated_poisson' needs its cap: pass --sampler-param cap=K"
        )
    from dpverify.samplers import make_sampler as _make

    return _make(name, dataset_size, sampling_rate, seed, **dict(params))


def _software() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("dpverify", "jax", "jaxlib", "flax", "optax", "numpy", "dp-accounting"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _init_seed(seed: int) -> int:
    from dpverify.samplers import step_rng

    return int(step_rng(seed, 0, stream=0x1417).integers(2**31 - 1))


def _check_devices(devices: int | None, plan: RunPlan, streams: int | None = None) -> None:
    """Fail before anything is written if ``devices`` cannot split ``p``, or if the
    ``streams`` cannot be had (too few local devices, or with ``devices``)."""
    if devices is not None and devices > 1:
        from trainers.sharding import data_parallel

        data_parallel(devices, physical_batch_size=plan.physical_batch_size)
    from trainers.dispatch import stream_devices

    stream_devices(streams, data_parallel=devices is not None and devices > 1)


def open_new(
    run_dir: Path,
    config: TrainConfig,
    *,
    plan_fn: Callable[..., RunPlan],
    seed: int,
    extra: dict[str, Any] | None = None,
    initial_checkpoint: bool = True,
) -> Session:
    """Create a run directory: secrets, config.json, ledger header, checkpoint 0.

    ``extra``: further public provenance for the header's ``extra`` (e.g. the
    process count of a multi-process job).  ``initial_checkpoint=False``
    leaves checkpoint 0 to the caller (a multi-process job writes it with
    every process, :mod:`trainers.multiprocess`).
    """
    from trainers.components import count_params, init_model

    if run_dir.exists() and not run_dir.is_dir():
        raise UnusableInput(f"{run_dir} is a file, not a run directory; pass a new --out")
    if (run_dir / _LEDGER_DIR).exists():
        raise UnusableInput(f"{run_dir} already holds a run; pass --resume or a new --out")
    if (run_dir / "noise.key").exists():
        raise UnusableInput(
            f"{run_dir} holds a run that never started (noise.key but no ledger/); "
            "remove it or pass a new --out"
        )
    # Everything that can refuse the request is decided before the first file
    # is written, so a refused run leaves nothing behind that blocks a rerun.
    task_name = config.task or DEFAULT_TASK
    dataset = load_dataset(task_name, config.data_path)
    init_seed = _init_seed(seed)
    _, _, params0 = init_model(task_name, dataset.num_classes, dataset.x_train[:1], init_seed)
    num_params = count_params(params0)
    example_bytes = int(np.asarray(dataset.x_train[:1]).nbytes)
    plan = plan_fn(config, dataset.size, num_params, example_bytes=example_bytes)
    _check_devices(config.devices, plan, config.streams)
    sampler_name = config.sampler or "poisson"
    sampler = make_sampler(
        sampler_name, plan.dataset_size, plan.sampling_rate, seed, dict(config.sampler_params)
    )
    claimed = _claim_or_refuse(plan)
    created_dir = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnusableInput(f"{run_dir}: cannot create the run directory: {exc.strerror}") from None
    try:
        session = _create_run(
            run_dir, config, plan, dataset, sampler, seed, init_seed, num_params, claimed, extra,
            initial_checkpoint=initial_checkpoint,
        )  # fmt: skip
        session.created_dir = created_dir
        return session
    except BaseException:
        _remove_partial_run(run_dir, created_dir)
        raise


def _claim_or_refuse(plan: RunPlan) -> float | None:
    """The header's claimed ε, or a one-line refusal naming the step count."""
    try:
        return _claim(plan, plan.steps)
    except (InvalidArgument, MemoryError, OverflowError, ValueError) as exc:
        raise InvalidArgument(
            f"steps={plan.steps}: the claimed epsilon cannot be computed for this many steps "
            f"({_one_line(exc)}); use fewer --steps/--epochs"
        ) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# What open_new creates in a run directory (removed again if creation fails).
_CREATED = ("ledger", "checkpoints", "noise.key", "private.json", _CONFIG_FILE)


def _remove_partial_run(run_dir: Path, created_dir: bool) -> None:
    """Undo a failed :func:`open_new` (its own files only; the directory if it made it)."""
    import shutil

    for name in _CREATED:
        path = run_dir / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        except OSError:
            pass
    if created_dir:
        try:
            run_dir.rmdir()
        except OSError:
            pass


def _create_run(
    run_dir: Path,
    config: TrainConfig,
    plan: RunPlan,
    dataset: Any,
    sampler: Any,
    seed: int,
    init_seed: int,
    num_params: int,
    claimed: float | None,
    extra: dict[str, Any] | None = None,
    *,
    initial_checkpoint: bool = True,
) -> Session:
    from dpverify.ledger import LedgerWriter, RunHeader
    from trainers.components import build_components
    from trainers.noise_key import create_noise_key, write_private, write_private_file

    sampler_name = config.sampler or "poisson"
    key, digest = create_noise_key(run_dir)
    private = {
        "seed": seed,
        "sampler": sampler_name,
        "sampler_params": dict(config.sampler_params),
        "mutation": config.mutation,
    }
    canary_header: dict = {}
    if plan.canaries:
        from trainers.canaries import setup_canaries

        private["canaries"], canary_header = setup_canaries(plan.canaries)
    write_private(run_dir, private)
    config_path = run_dir / _CONFIG_FILE
    write_private_file(config_path, (json.dumps(plan.to_json(), indent=2) + "\n").encode())
    config_path.chmod(0o644)  # public: the auditor rebuilds model and data from it
    declared_params = sampler.params() if plan.declared_sampler == sampler.name else {}
    comps = build_components(plan, dataset, init_seed)
    clipping, clipping_reason = resolve_run_clipping(plan, comps, dataset, config.devices)
    from trainers.prng import prng_record

    header = RunHeader(
        dataset_size=plan.dataset_size,
        sampler=plan.declared_sampler,
        sampler_params=dict(declared_params),
        sampling_rate=plan.sampling_rate,
        noise_multiplier=plan.noise_multiplier,
        clip_norm=plan.clip_norm,
        delta=plan.delta,
        claimed_epsilon=claimed,
        accountant="pld",
        expected_batch_size=plan.expected_batch_size,
        physical_batch_size=plan.physical_batch_size,
        precision=plan.precision,
        task=plan.task,
        software=_software(),
        dataset_fingerprint=dataset.fingerprint,
        noise_key_digest=digest,
        run_id=uuid.uuid4().hex,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        extra={
            "steps_planned": plan.steps,
            "learning_rate": plan.learning_rate,
            "optimizer": plan.optimizer,
            "checkpoint_every": plan.checkpoint_every,
            "num_params": num_params,
            "devices": config.devices or 1,
            "streams": config.streams or 1,
            "framework": "jax",
            "prng": prng_record(),
            **canary_header,
            "clipping": clipping,
            **dict(extra or {}),
        },
    )
    writer = LedgerWriter.create(run_dir / _LEDGER_DIR, header)
    session = Session(
        run_dir=run_dir,
        plan=plan,
        private=private,
        dataset=dataset,
        sampler=sampler,
        model_apply=comps.model_apply,
        optimizer=comps.optimizer,
        params=comps.params,
        opt_state=comps.opt_state,
        noise_key=key,
        noise_key_digest=digest,
        writer=writer,
        start_step=0,
        executed_before=0,
        resumed=False,
        devices=config.devices,
        streams=config.streams,
        canaries=_canaries(private, comps.params, plan),
        clipping=clipping,
        clipping_reason=clipping_reason,
    )
    if initial_checkpoint:
        session.checkpoint(0, comps.params, comps.opt_state)
    return session


# Fields of TrainConfig that, when given with --resume, must match the run.
_RESUME_CHECKED = (
    "task",
    "sampling_rate",
    "expected_batch_size",
    "noise_multiplier",
    "target_epsilon",
    "clip_norm",
    "steps",
    "delta",
    "physical_batch_size",
    "precision",
    "learning_rate",
    "optimizer",
    "checkpoint_every",
    "data_path",
)


def _check_resume_config(config: TrainConfig, plan: RunPlan, private: dict) -> None:
    for name in _RESUME_CHECKED:
        given = getattr(config, name)
        stored = getattr(plan, name)
        if given is None or (name == "physical_batch_size" and given == "auto"):
            continue
        same = (
            math.isclose(float(given), float(stored), rel_tol=1e-9)
            if isinstance(given, (int, float)) and isinstance(stored, (int, float))
            else given == stored
        )
        if not same:
            raise InvalidArgument(
                f"{name}={given!r} differs from the run being resumed ({name}={stored!r})"
            )
    if config.epochs is not None:
        steps = math.ceil(config.epochs / plan.sampling_rate - 1e-9)
        if steps != plan.steps:
            raise InvalidArgument(
                f"epochs={config.epochs!r} ({steps} steps) differs from the run being resumed "
                f"(steps={plan.steps!r})"
            )
    if config.declare_sampler is not None and config.declare_sampler != plan.declared_sampler:
        raise InvalidArgument(
            f"declare_sampler={config.declare_sampler!r} differs from the run being resumed "
            f"(declared_sampler={plan.declared_sampler!r})"
        )
    stored_params = dict(private.get("sampler_params") or {})
    if config.sampler_params and dict(config.sampler_params) != stored_params:
        raise InvalidArgument(
            f"sampler_params={dict(config.sampler_params)!r} differs from the run being "
            f"resumed (sampler_params={stored_params!r})"
        )
    if config.mutation is not None and config.mutation != private.get("mutation"):
        raise InvalidArgument(f"mutation={config.mutation!r} differs from the run being resumed")
    if config.canaries and config.canaries != plan.canaries:
        raise InvalidArgument(
            f"canaries={config.canaries!r} differs from the run being resumed "
            f"(canaries={plan.canaries!r})"
        )
    if config.seed is not None and config.seed != private.get("seed"):
        raise InvalidArgument(f"seed={config.seed!r} differs from the run being resumed")
    if config.sampler is not None and config.sampler != private.get("sampler"):
        raise InvalidArgument(
            f"sampler={config.sampler!r} differs from the run being resumed "
            f"(sampler={private.get('sampler')!r})"
        )


def open_resume(run_dir: Path, config: TrainConfig | None) -> Session:
    """Reopen a run at its last intact checkpoint with a ``Resume`` record."""
    from dpverify.ledger import LedgerWriter, read_ledger
    from trainers.checkpoint import checkpoint_path, is_intact, load_checkpoint
    from trainers.components import build_components
    from trainers.noise_key import load_noise_key, read_private

    ledger_dir = run_dir / _LEDGER_DIR
    if not ledger_dir.exists():
        raise UnusableInput(f"{run_dir} holds no run to resume (no ledger/)")
    try:
        plan = RunPlan.from_json(json.loads((run_dir / _CONFIG_FILE).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise UnusableInput(f"{run_dir / _CONFIG_FILE} cannot be read: {exc}") from None
    private = read_private(run_dir)
    if config is not None:
        _check_resume_config(config, plan, private)
    ledger = read_ledger(ledger_dir)
    header = ledger.header
    if ledger.seal is not None:
        summary_path = run_dir / _SUMMARY_FILE
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            summary["note_resume"] = "the run was already complete; nothing to resume"
            return _sealed_session(run_dir, plan, private, summary)
        raise UnusableInput(f"{run_dir} holds a complete (sealed) run; nothing to resume")
    restored = None
    for rec in reversed(ledger.checkpoints):
        path = run_dir / (rec.path or checkpoint_path(rec.step))
        if is_intact(path, rec.digest):  # a msgpack file or an Orbax directory
            restored = (rec, path)
            break
    dataset = load_dataset(plan.task, plan.data_path)
    if header.dataset_fingerprint and dataset.fingerprint != header.dataset_fingerprint:
        raise UnusableInput(
            f"the data set of task {plan.task!r} does not match the ledger's dataset_fingerprint"
        )
    key = load_noise_key(run_dir, expected_digest=header.noise_key_digest)
    seed = int(private["seed"])
    comps = build_components(plan, dataset, _init_seed(seed))
    params, opt_state, start, ck_digest = comps.params, comps.opt_state, 0, None
    if restored is not None:
        rec, path = restored
        state = load_checkpoint(
            path,
            params_template=comps.params,
            opt_state_template=comps.opt_state,
            expected_digest=rec.digest,
        )
        params, opt_state, start, ck_digest = state.params, state.opt_state, rec.step, rec.digest
    sampler = make_sampler(
        private["sampler"],
        plan.dataset_size,
        plan.sampling_rate,
        seed,
        dict(private.get("sampler_params") or {}),
    )
    clipping, clipping_reason = resolve_run_clipping(
        plan, comps, dataset, None if config is None else config.devices
    )
    if config is not None:  # refused before the ledger is reopened
        _check_devices(config.devices, plan, config.streams)
    writer = LedgerWriter.resume(ledger_dir, step=start, checkpoint_digest=ck_digest)
    return Session(
        run_dir=run_dir,
        plan=plan,
        private=private,
        dataset=dataset,
        sampler=sampler,
        model_apply=comps.model_apply,
        optimizer=comps.optimizer,
        params=params,
        opt_state=opt_state,
        noise_key=key,
        noise_key_digest=header.noise_key_digest or "",
        writer=writer,
        start_step=start,
        executed_before=len(ledger.steps),
        resumed=True,
        devices=None if config is None else config.devices,
        streams=None if config is None else config.streams,
        canaries=_canaries(private, params, plan),
        clipping=clipping,
        clipping_reason=clipping_reason,
    )


def _canaries(private: dict, params: Any, plan: RunPlan) -> Any:
    """The run's :class:`trainers.canaries.TrainingCanaries` (``None`` without canaries)."""
    if not plan.canaries:
        return None
    from trainers.canaries import load_canaries

    return load_canaries(
        private,
        params,
        real_size=plan.dataset_size - plan.canaries,
        clip_norm=plan.clip_norm,
    )


def _sealed_session(run_dir: Path, plan: RunPlan, private: dict, summary: dict) -> Session:
    return Session(
        run_dir=run_dir,
        plan=plan,
        private=private,
        dataset=None,
        sampler=None,
        model_apply=None,
        optimizer=None,
        params=None,
        opt_state=None,
        noise_key=b"",
        noise_key_digest="",
        writer=None,
        start_step=plan.steps,
        executed_before=0,
        resumed=True,
        sealed_summary=summary,
    )
