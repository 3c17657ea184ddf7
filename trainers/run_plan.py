"""What a training run will do: the user's request and its resolved plan.

:class:`TrainConfig` is what the user asks for (``dpverify train`` flags);
anything left ``None`` comes from the task's defaults.  :func:`plan_run` turns
it into a :class:`RunPlan` with every value concrete: sampling rate and
expected batch size, noise multiplier (calibrated from a target ε when asked),
number of steps, physical batch size, δ.  The plan's public part is saved as
``RUN_DIR/config.json`` so a resumed run and the replaying auditor rebuild the
same model, optimiser and data; the sampler seed, the true sampler name when a
different one is declared, and a testing mutation go to ``private.json``.

This module is light: JAX is imported only inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dpverify._validate import check_choice, check_int, check_positive, check_probability
from dpverify.errors import InvalidArgument

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_TASK",
    "OPTIMIZERS",
    "RunPlan",
    "TrainConfig",
    "auto_physical_batch_size",
    "check_physical_batch_memory",
    "physical_batch_bytes",
    "plan_run",
]

#: Optimisers ``--optimizer`` accepts (Optax names).
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "momentum")

#: Task trained when none is named.
DEFAULT_TASK = "digits-mlp"

#: Checkpoint after every this many steps unless told otherwise.
DEFAULT_CHECKPOINT_EVERY = 25

_PRECISIONS: tuple[str, ...] = ("float32", "tf32", "bf16")

#: Memory budget for one physical batch's per-example gradients when the
#: device does not report its memory (CPU): 1 GiB.
_DEFAULT_MEMORY_BUDGET = 1 << 30


def _sampler_names() -> tuple[str, ...]:
    from dpverify.samplers import SAMPLER_NAMES

    return tuple(SAMPLER_NAMES)


def _optional(check, name: str, value: Any, **kw: Any) -> Any:
    return None if value is None else check(name, value, **kw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A training request.  ``None`` means "the task's default".

    Exactly one of ``sampling_rate``/``expected_batch_size``, of
    ``noise_multiplier``/``target_epsilon`` and of ``steps``/``epochs`` may be
    given.

    Attributes:
        task: task name (:data:`trainers.tasks.TASKS`; default :data:`DEFAULT_TASK`).
        sampling_rate: q in (0, 1].
        expected_batch_size: q·N, the alternative way to set q.
        noise_multiplier: σ ≥ 0.
        target_epsilon: ε to calibrate σ for (at ``delta``, PLD accountant).
        clip_norm: C > 0.
        steps: number of logical steps T ≥ 1.
        epochs: T = ⌈epochs / q⌉ (one epoch = N examples in expectation).
        delta: δ in (0, 1); default min(1e-5, 0.1/N).
        physical_batch_size: p ≥ 1, ``"auto"`` (:func:`auto_physical_batch_size`)
            or ``None`` (task default, else auto).
        precision: ``"float32"`` (default), ``"tf32"`` or ``"bf16"``.
        seed: private seed of the sampler and initialisation (random if ``None``).
        sampler: sampler name (default ``"poisson"``); others are shortcuts.
        sampler_params: the sampler's parameters (e.g. ``{"cap": 80}``).
        declare_sampler: sampler name written into the ledger header instead
            of the true one (teaching/testing: the auditor must catch a lie).
        learning_rate: optimiser learning rate > 0.
        optimizer: one of :data:`OPTIMIZERS`.
        checkpoint_every: K ≥ 1: checkpoint after every K steps and at the end
            (default :data:`DEFAULT_CHECKPOINT_EVERY`).
        data_path: local data file/folder for tasks that need one (recorded
            as an absolute path so replay works from any directory).
        mutation: name of a deliberate bug (``trainers.mutations``; testing only).
        devices: run each physical batch data-parallel over this many devices
            (:mod:`trainers.sharding`; p must be divisible by it); ``None`` = 1.
        streams: S ≥ 1: deal each step's physical batches to S local devices
            that accumulate concurrently (``MaskedDPSGD(streams=S)``; on the
            CPU, S devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=S``);
            a speed setting, like ``devices``: not recorded, may change on resume.
        canaries: M ≥ 0 white-box gradient canaries (:mod:`trainers.canaries`);
            their M slots count in N.
        clipping: ``"vmap"``, ``"ghost"`` or ``"auto"`` (``None``: auto), how
            per-example norms and the clipped sum are computed
            (:mod:`trainers.clipping.select`); never changes the mechanism.
    """

    task: str | None = None
    sampling_rate: float | None = None
    expected_batch_size: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    clip_norm: float | None = None
    steps: int | None = None
    epochs: float | None = None
    delta: float | None = None
    physical_batch_size: int | str | None = None
    precision: str | None = None
    seed: int | None = None
    sampler: str | None = None
    sampler_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    declare_sampler: str | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    checkpoint_every: int | None = None
    data_path: str | None = None
    mutation: str | None = None
    devices: int | None = None
    streams: int | None = None
    canaries: int = 0
    clipping: str | None = None

    def __post_init__(self) -> None:
        from trainers.tasks import get_task

        if self.task is not None:
            get_task(self.task)
        for a, b in (
            ("sampling_rate", "expected_batch_size"),
            ("noise_multiplier", "target_epsilon"),
            ("steps", "epochs"),
        ):
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise InvalidArgument(f"give {a} or {b}, not both")
        _optional(check_probability, "sampling_rate", self.sampling_rate)
        _optional(check_positive, "expected_batch_size", self.expected_batch_size)
        _optional(check_positive, "noise_multiplier", self.noise_multiplier, allow_zero=True)
        _optional(check_positive, "target_epsilon", self.target_epsilon)
        _optional(check_positive, "clip_norm", self.clip_norm)
        _optional(check_int, "steps", self.steps, minimum=1)
        _optional(check_positive, "epochs", self.epochs)
        if self.delta is not None:
            check_probability("delta", self.delta, allow_one=False)
        if self.physical_batch_size is not None and self.physical_batch_size != "auto":
            check_int("physical_batch_size", self.physical_batch_size, minimum=1)
        if self.precision is not None:
            check_choice("precision", self.precision, _PRECISIONS)
        _optional(check_int, "seed", self.seed, minimum=0)
        names = _sampler_names()
        if self.sampler is not None:
            check_choice("sampler", self.sampler, names)
        if self.declare_sampler is not None:
            check_choice("declare_sampler", self.declare_sampler, names)
        _optional(check_positive, "learning_rate", self.learning_rate)
        if self.optimizer is not None:
            check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _optional(check_int, "checkpoint_every", self.checkpoint_every, minimum=1)
        if self.mutation is not None:
            _check_mutation(self.mutation)
        _optional(check_int, "devices", self.devices, minimum=1)
        _optional(check_int, "streams", self.streams, minimum=1)
        check_int("canaries", self.canaries, minimum=0)
        if self.clipping is not None:
            from trainers.clipping.select import check_clipping

            check_clipping(self.clipping)


def _check_mutation(name: str) -> None:
    from trainers.mutations import MUTATIONS, PROCESS_MUTATIONS

    check_choice("mutation", name, (*MUTATIONS, *PROCESS_MUTATIONS))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunPlan:
    """A fully resolved run: the public configuration saved as ``config.json``.

    Attributes mirror :class:`TrainConfig` with every value concrete, plus
    ``dataset_size`` (N), ``expected_batch_size`` (q·N, the denominator) and
    ``declared_sampler`` (what the header says).  With ``canaries`` M > 0,
    N counts the M canary slots (indices N − M … N − 1).  Secrets (seed, true sampler
    when a different one is declared, mutation) are not part of the plan.
    """

    task: str
    data_path: str | None
    dataset_size: int
    sampling_rate: float
    expected_batch_size: float
    noise_multiplier: float
    target_epsilon: float | None
    clip_norm: float
    steps: int
    delta: float
    physical_batch_size: int
    precision: str
    declared_sampler: str
    learning_rate: float
    optimizer: str
    checkpoint_every: int
    canaries: int = 0
    clipping: str = "auto"

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (``config.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunPlan:
        """Inverse of :meth:`to_json`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidArgument(f"config.json has unknown fields: {', '.join(unknown)}")
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = sorted(names - set(data) - optional)
        if missing:
            raise InvalidArgument(f"config.json lacks fields: {', '.join(missing)}")
        return cls(**dict(data))


def auto_physical_batch_size(
    expected_batch_size: float, num_params: int, *, memory_bytes: int | None = None
) -> int:
    """The largest power of two p ≤ 2·E whose per-example gradients fit memory.

    Heuristic (documented in docs/training.md): the vmapped step materialises
    about three float32 copies of the parameters per example (gradient,
    clipped gradient, optimiser-side temporaries), so we require
    ``12 · num_params · p ≤ budget`` with budget a quarter of the device's
    reported memory limit, or 1 GiB where the device reports none (CPU).
    Capping p at 2·E keeps padding waste bounded: a larger p would mostly
    process padding rows.

    Args:
        expected_batch_size: E = q·N > 0.
        num_params: number of trainable scalars.
        memory_bytes: memory budget in bytes; device-derived when ``None``.
    """
    check_positive("expected_batch_size", expected_batch_size)
    check_int("num_params", num_params, minimum=1)
    budget = _device_memory_budget() if memory_bytes is None else int(memory_bytes)
    by_memory = max(1, budget // (12 * num_params))
    limit = max(1, min(int(2 * expected_batch_size), by_memory))
    return 1 << (limit.bit_length() - 1)


def _device_memory_budget() -> int:
    try:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        limit = int(stats.get("bytes_limit", 0))
    except Exception:  # CPU backends may not implement memory_stats
        limit = 0
    return limit // 4 if limit > 0 else _DEFAULT_MEMORY_BUDGET


def _device_memory_total() -> tuple[int, str]:
    """Total memory of the first device (bytes) and its name; host RAM on CPU."""
    try:
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() or {}
        limit = int(stats.get("bytes_limit", 0))
        if limit > 0:
            return limit, f"{device.platform.upper()} device"
    except Exception:  # CPU backends may not implement memory_stats
        pass
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host"
    except (ValueError, OSError, AttributeError):
        return 0, "host"


def physical_batch_bytes(physical_batch_size: int, num_params: int, example_bytes: int = 0) -> int:
    """Estimated memory of one physical batch: ``p · (12 · num_params + example_bytes)``.

    The same model as :func:`auto_physical_batch_size` (three float32 copies of
    the parameters per example), plus the gathered input rows.
    """
    return int(physical_batch_size) * (12 * int(num_params) + int(example_bytes))


def check_physical_batch_memory(
    physical_batch_size: int,
    num_params: int,
    example_bytes: int = 0,
    *,
    memory_bytes: int | None = None,
) -> None:
    """Refuse, before anything is written, a physical batch that cannot fit memory.

    The estimate (:func:`physical_batch_bytes`) is compared with the whole
    device memory (host RAM on CPU), so only a batch that certainly cannot
    run is refused (XLA would fail with RESOURCE_EXHAUSTED at the first step).

    Raises:
        InvalidArgument: the estimate exceeds the memory.
    """
    need = physical_batch_bytes(physical_batch_size, num_params, example_bytes)
    have, where = (memory_bytes, "device") if memory_bytes is not None else _device_memory_total()
    if have > 0 and need > have:
        raise InvalidArgument(
            f"physical_batch_size={physical_batch_size} needs about {_gib(need)} for per-example "
            f"gradients ({physical_batch_size} x {num_params:,} parameters x 12 bytes), more than "
            f"the {_gib(have)} of the {where}; pass a smaller --physical-batch-size or auto"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _default_delta(dataset_size: int) -> float:
    return min(1e-5, 0.1 / dataset_size)


def plan_run(
    config: TrainConfig, dataset_size: int, num_params: int, *, example_bytes: int = 0
) -> RunPlan:
    """Resolve ``config`` against the task defaults and the data set size.

    ``dataset_size`` is the number of real examples; the plan's N adds the
    ``config.canaries`` canary slots.

    σ from ``target_epsilon`` uses
    ``dpverify.accounting.calibrate_noise_multiplier`` (PLD, Poisson).
    ``example_bytes`` (one input row) enters the physical batch's memory
    estimate (:func:`check_physical_batch_memory`).

    Raises:
        InvalidArgument: resolved values out of range (e.g. expected batch
            size larger than N, a physical batch that cannot fit memory).
    """
    from trainers.tasks import get_task

    task = get_task(config.task or DEFAULT_TASK)
    d = dict(task.defaults)
    canaries = check_int("canaries", config.canaries, minimum=0)
    if canaries > num_params:
        raise InvalidArgument(f"canaries={canaries} must be <= the model's {num_params} parameters")
    n = check_int("dataset_size", dataset_size, minimum=1) + canaries
    if config.sampling_rate is not None:
        q = config.sampling_rate
    else:
        e = config.expected_batch_size
        hint = ""
        if e is None:
            e = d.get("expected_batch_size", max(1.0, 0.01 * n))
            hint = f" (task {task.name!r} default; pass --expected-batch-size or --sampling-rate)"
        if e > n:
            raise InvalidArgument(f"expected_batch_size={e!r} must be <= dataset size {n}{hint}")
        q = e / n
    q = check_probability("sampling_rate", float(q))
    if config.steps is not None:
        steps = config.steps
    elif config.epochs is not None:
        steps = math.ceil(config.epochs / q - 1e-9)
    else:
        steps = int(d.get("steps", 100))
    steps = check_int("steps", steps, minimum=1)
    delta = config.delta if config.delta is not None else _default_delta(n)
    if config.noise_multiplier is not None:
        sigma = config.noise_multiplier
    elif config.target_epsilon is not None:
        from dpverify.accounting import calibrate_noise_multiplier
        from dpverify.accounting.calibration import NoiseBelowTightFloor

        try:
            sigma = calibrate_noise_multiplier(q, steps, delta, config.target_epsilon)
        except NoiseBelowTightFloor as exc:  # train claims with PLD: no accountant to switch
            raise InvalidArgument(
                f"target_epsilon={config.target_epsilon!r} needs noise_multiplier < "
                f"{exc.floor:g}, where the PLD accountant that train claims epsilon with is "
                f"impractically slow; ask for a smaller --target-epsilon, or pass "
                f"--noise-multiplier {exc.floor:g} or more"
            ) from None
    else:
        sigma = float(d.get("noise_multiplier", 1.0))
    clip = config.clip_norm if config.clip_norm is not None else float(d.get("clip_norm", 1.0))
    p = config.physical_batch_size
    if p is None:
        p = d.get("physical_batch_size", "auto")
    if p == "auto":
        p = auto_physical_batch_size(q * n, num_params)
    else:
        check_physical_batch_memory(check_int("physical_batch_size", p, minimum=1), num_params,
                                    example_bytes)  # fmt: skip
    data_path = None if config.data_path is None else str(Path(config.data_path).resolve())
    return RunPlan(
        task=task.name,
        data_path=data_path,
        dataset_size=n,
        sampling_rate=q,
        expected_batch_size=q * n,
        noise_multiplier=float(sigma),
        target_epsilon=config.target_epsilon,
        clip_norm=float(clip),
        steps=steps,
        delta=float(delta),
        physical_batch_size=check_int("physical_batch_size", p, minimum=1),
        precision=config.precision or "float32",
        declared_sampler=config.declare_sampler or config.sampler or "poisson",
        learning_rate=float(
            config.learning_rate
            if config.learning_rate is not None
            else d.get("learning_rate", 1e-3)
        ),
        optimizer=config.optimizer or d.get("optimizer", "adam"),
        checkpoint_every=config.checkpoint_every or DEFAULT_CHECKPOINT_EVERY,
        canaries=canaries,
        clipping=config.clipping or "auto",
    )
