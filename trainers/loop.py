"""The training loop: sampler → masked DP-SGD step → ledger → checkpoints.

For each logical step t the loop

1. draws the batch ``indices = sampler.sample(t)`` (step-addressable, so a
   resumed run redraws exactly the same batches),
2. queues :meth:`trainers.dpsgd.MaskedDPSGD.step_async` (one compilation per run),
3. appends the :class:`~dpverify.ledger.Step` record to the ledger, one step
   behind: step t − 1 is recorded while step t runs, so sampling, batching and
   the ledger write overlap the device's work (:class:`RecordOneBehind`),
4. every ``checkpoint_every`` steps and at the end: **write-ahead** — flushes
   (fsyncs) the ledger, *then* saves the parameters after step t as checkpoint
   t + 1, then appends its :class:`~dpverify.ledger.Checkpoint` record.

A checkpoint at step 0 (the initial parameters) is written before the first
step, so every step has a checkpoint at or before it and a run killed at any
moment can be resumed.  ``train(..., resume=True)`` reopens the ledger with a
:class:`~dpverify.ledger.Resume` record at the last checkpoint whose file is
intact and re-executes the steps after it; the re-executed steps are recorded
again and count for privacy: the :class:`~dpverify.ledger.Seal` claims ε over
all executed steps.

Run directory::

    RUN_DIR/ledger/        the ledger (0600)
    RUN_DIR/checkpoints/   step-NNNNNNNN.msgpack (kept: the auditor replays from them);
                           step-NNNNNNNN.orbax/ in a multi-process job (Orbax, every
                           process writes its shards; trainers.checkpoint_orbax)
    RUN_DIR/noise.key      secret noise key (0600); the header holds its SHA-256
    RUN_DIR/private.json   secret sampler seed and canary key (0600)
    RUN_DIR/config.json    the resolved public plan (task, data path, hyperparameters)
    RUN_DIR/summary.json   the run summary (0600: it holds the unnoised loss of the last
                           batch; see docs/privacy-of-artefacts.md)
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

from dpverify._json import finite
from dpverify.errors import InvalidArgument, UnusableInput
from trainers.run_plan import RunPlan, TrainConfig, plan_run
from trainers.session import Session, open_new, open_resume

__all__ = [
    "CONFIG_FILE",
    "SUMMARY_FILE",
    "RecordOneBehind",
    "TrainConfig",
    "load_summary",
    "train",
]

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


def train(
    config: TrainConfig | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    processes: Any = None,
) -> dict[str, Any]:
    """Train with masked DP-SGD, recording every step in ``out_dir``'s ledger.

    Args:
        config: the request; may be ``None`` when resuming (the run's
            ``config.json`` is authoritative then; values given in ``config``
            must agree with it).
        out_dir: the run directory (created; must not hold a run unless resuming).
        resume: continue a killed run from its last checkpoint.
        progress: show a progress bar on stderr (only when it is a terminal).
        processes: a :class:`trainers.distributed.ProcessGroup` with P > 1 to
            run as process I of a multi-process ``jax.distributed`` job
            (:mod:`trainers.multiprocess`): every process computes its share
            of each step; only process 0 writes the run directory (followers
            return the same summary without writing it).

    Returns:
        The summary written to ``RUN_DIR/summary.json``: ``steps``,
        ``steps_executed``, ``epsilon`` (per accountant), ``claimed_epsilon``,
        ``delta``, ``accuracy``, ``loss``, ``compilations``,
        ``examples_per_second``, ``physical_batch_size``, ``precision``,
        ``sampler``, ``shortcut``, ``wall_seconds``, ...

    Raises:
        InvalidArgument: bad hyperparameters.
        UnusableInput: ``out_dir`` already holds a run (without ``resume``), or
            holds none / a damaged one (with ``resume``); data missing.
        trainers.distributed.PeerFailed: another process of the job stopped.
    """
    from trainers.interrupt import deferred_interrupt

    run_dir = Path(out_dir)
    started = time.perf_counter()
    shared = processes is not None and processes.is_multi_process
    if shared:
        from trainers.distributed import initialize

        initialize(processes)
    # Ctrl-C from here on (setup included: a KeyboardInterrupt raised inside a
    # JAX callback is swallowed) is acted on at the next step boundary.
    # Opening the run directory is one unit: a hard stop (second Ctrl-C in the
    # CLI) waits for it, so the directory is never left half-created.
    with deferred_interrupt() as interrupt:
        with interrupt.critical():
            if shared:
                session = _open_shared(run_dir, config, resume=resume, group=processes)
            else:
                session = _open(run_dir, config, resume=resume)
            if session.sealed_summary is not None:
                return session.sealed_summary
            interrupt.watch(session.writer)
        return _run(session, run_dir, progress=progress, started=started, interrupt=interrupt)


def _open(
    run_dir: Path,
    config: TrainConfig | None,
    *,
    resume: bool,
    extra: dict | None = None,
    shared: bool = False,
) -> Session:
    if resume:
        return open_resume(run_dir, config)
    if config is None:
        raise InvalidArgument("config=None: a new run needs a TrainConfig")
    return open_new(
        run_dir,
        config,
        plan_fn=plan_run,
        seed=_fresh_seed(config),
        extra=extra,
        initial_checkpoint=not shared,  # a job's processes write checkpoint 0 together
    )


def _open_shared(run_dir: Path, config: TrainConfig | None, *, resume: bool, group: Any) -> Session:
    """The session of one process of a multi-process job (see :mod:`trainers.multiprocess`)."""
    import dataclasses

    import jax

    from trainers.multiprocess import open_shared

    if config is not None and config.canaries:
        raise InvalidArgument(
            f"canaries={config.canaries!r}: canaries are not supported in multi-process runs yet"
        )
    if config is not None and config.devices is not None:
        raise InvalidArgument(
            f"devices={config.devices!r} cannot be combined with num_processes: a multi-process "
            "run uses every device of every process"
        )
    if config is not None:
        config = dataclasses.replace(config, devices=jax.device_count())
    session = open_shared(
        run_dir,
        config,
        resume=resume,
        group=group,
        open_leader=lambda: _open(
            run_dir, config, resume=resume, extra=group.describe(), shared=True
        ),
    )
    session.devices = tuple(jax.devices())
    return session


def _fresh_seed(config: TrainConfig) -> int:
    return config.seed if config.seed is not None else secrets.randbelow(2**62)


def _run(
    session: Session, run_dir: Path, *, progress: bool, started: float, interrupt: Any
) -> dict[str, Any]:
    import jax.numpy as jnp

    from dpverify.ledger import Seal
    from trainers.noise_key import noise_prng_key
    from trainers.progress import TrainingProgress

    plan = session.plan
    trainer = session.make_trainer()
    x = jnp.asarray(session.dataset.x_train)
    y = jnp.asarray(session.dataset.y_train)
    noise_key = noise_prng_key(session.noise_key)
    params, opt_state = session.params, session.opt_state
    writer = session.writer
    bar = TrainingProgress(
        total=plan.steps,
        initial=session.start_step,
        enabled=progress and session.leader,
        sampling_rate=plan.sampling_rate,
        noise_multiplier=plan.noise_multiplier,
        delta=plan.delta,
        executed_before=session.executed_before,
        label=f"{plan.task} [{session.sampler_label}]",
    )
    executed = examples = 0
    loss = math.nan
    first_step_seconds = None
    loop_start = time.perf_counter()
    after_first = loop_start

    def record(t: int, indices: np.ndarray, stats: Any) -> None:
        """Step t's ledger record and its book-keeping (the step has finished)."""
        nonlocal executed, examples, loss, first_step_seconds, after_first
        entry = _step_record(t, indices, plan, stats)
        with interrupt.critical():
            writer.append(entry)
        executed += 1
        examples += int(indices.size) if executed > 1 else 0
        value = _float(getattr(stats, "loss", None))
        loss = math.nan if value is None else value
        if executed == 1:
            after_first = time.perf_counter()
            first_step_seconds = after_first - loop_start
        bar.update(t, executed, loss)

    behind = RecordOneBehind(record)
    compile_seconds = None
    try:
        interrupt.check()  # Ctrl-C during setup: stop before the first step
        if not session.shared and session.start_step < plan.steps:
            # Every batch shape (full, each tail size, each stream device) compiles
            # now, not at its first use some steps in; nothing of it is released.
            compile_start = time.perf_counter()
            if _precompile(trainer, session, params, opt_state, x, y):
                compile_seconds = time.perf_counter() - compile_start
            loop_start = after_first = time.perf_counter()
            interrupt.check()
        for t in range(session.start_step, plan.steps):
            indices = session.sampler.sample(t)
            if session.shared:
                run = functools.partial(_step, trainer, session, params, opt_state, x, y)
                params, opt_state, stats = _shared_step(
                    functools.partial(run, indices, noise_key, t, wait=True), t
                )
                record(t, indices, stats)  # the step ran to completion: nothing to overlap
            else:  # queued: step t - 1 is recorded while step t runs
                params, opt_state, pending = _step(
                    trainer, session, params, opt_state, x, y, indices, noise_key, t
                )
                behind.push(t, indices, pending)
            if (t + 1) % plan.checkpoint_every == 0 or t + 1 == plan.steps:
                behind.settle()  # write-ahead: the ledger holds step t before its checkpoint
                with interrupt.critical():
                    session.checkpoint(t + 1, params, opt_state)
            if interrupt.requested:
                behind.settle()  # the step in flight is finished and recorded first
            interrupt.check()  # Ctrl-C stops here, after the step is recorded
        behind.settle()
    except BaseException as exc:
        behind.settle_quietly()  # a step that finished is recorded; one that failed is not
        bar.close()
        with interrupt.critical():
            _close_quietly(writer)
            interrupt.watch(None)
            if executed == 0 and not isinstance(exc, KeyboardInterrupt):
                # e.g. RESOURCE_EXHAUSTED at the first step: leave nothing that
                # blocks a rerun (an interrupted run stays resumable)
                session.discard()
        raise
    bar.close()
    loop_end = time.perf_counter()
    executed_total = session.executed_before + executed
    claimed = session.claim(executed_total) if session.leader else None
    with interrupt.critical():
        writer.close(
            Seal(
                steps_executed=executed_total,
                final_step=plan.steps,
                claimed_epsilon=claimed,
                delta=plan.delta,
            )
        )
        interrupt.watch(None)
    timed = loop_end - after_first
    compilations = int(getattr(trainer, "compilations", -1))
    per_process = [compilations]
    if session.shared:  # every process's count, for the leader's summary
        from trainers.distributed import broadcast_all_json

        per_process = [int(c) for c in broadcast_all_json(compilations)]
    summary = {
        "task": plan.task,
        "steps": plan.steps,
        "steps_executed": executed_total,
        "steps_this_session": executed,
        "resumed_from": session.start_step if session.resumed else None,
        "epsilon": session.epsilon_report(executed_total) if session.leader else None,
        "claimed_epsilon": claimed,
        "delta": plan.delta,
        "accuracy": _accuracy(session.model_apply, _host(params), session.dataset),
        "loss": loss if math.isfinite(loss) else None,
        "compilations": compilations,
        "compilations_per_process": per_process,
        "devices": int(getattr(trainer, "device_count", 1)),
        "streams": int(getattr(trainer, "stream_count", 1)),
        "processes": _process_count(session),
        "examples_per_second": (examples / timed) if executed > 1 and timed > 0 else None,
        "first_step_seconds": first_step_seconds,
        "compile_seconds": compile_seconds,
        "physical_batch_size": plan.physical_batch_size,
        "precision": plan.precision,
        "clipping": getattr(trainer, "clipping", None) or session.clipping,
        "clipping_reason": session.clipping_reason,
        "compiler_options": getattr(trainer, "compiler_options", None),
        "accumulate_compiler_options": getattr(trainer, "accumulate_compiler_options", None),
        "sampling_rate": plan.sampling_rate,
        "expected_batch_size": plan.expected_batch_size,
        "noise_multiplier": plan.noise_multiplier,
        "clip_norm": plan.clip_norm,
        "canaries": plan.canaries,
        "sampler": session.sampler.name,
        "declared_sampler": plan.declared_sampler,
        "shortcut": not bool(getattr(session.sampler, "is_poisson", False)),
        "ledger_head": _head(writer),
        "wall_seconds": time.perf_counter() - started,
    }
    if summary["shortcut"]:
        summary["note"] = (
            f"sampler {session.sampler.name!r} is a shortcut, not Poisson sampling: "
            "the Poisson epsilon does not apply to this run"
        )
    if session.leader:
        _write_json(run_dir / SUMMARY_FILE, summary)
    if session.shared:  # the job is complete once process 0 has sealed and summarised
        from trainers.distributed import barrier

        barrier("dpverify-end")
    return summary


def _precompile(trainer, session, params, opt_state, x, y) -> bool:
    """:meth:`~trainers.dispatch.MaskedDPSGD.precompile` with the run's arguments (an
    all-zero canary sum when the run has canaries: its steps all pass one).

    Its throwaway steps run on copies of the parameters and optimiser state, so
    they need that much more device memory than the run.  When the device has
    not got it (``RESOURCE_EXHAUSTED``), the copies are dropped, the run's own
    arguments are untouched, and the run goes on without: each batch shape then
    compiles at its first use, as it would have.  Returns whether it ran.
    """
    canaries = session.canaries
    extra = None if canaries is None else canaries.clipped_sum(np.zeros(0, np.int64))
    try:
        trainer.precompile(params, opt_state, x, y, extra_sum=extra)
    except Exception as exc:
        if "RESOURCE_EXHAUSTED" not in str(exc):
            raise
        return False
    return True


def _step(trainer, session, params, opt_state, x, y, indices, noise_key, t, *, wait=False):
    """One masked step, queued (:meth:`~trainers.dispatch.MaskedDPSGD.step_async`;
    ``wait``: run to completion, :meth:`~trainers.dispatch.MaskedDPSGD.step`); canary
    slots (indices ≥ N₀) enter as an extra clipped sum."""
    run = trainer.step if wait else trainer.step_async
    canaries = session.canaries
    if canaries is None:
        return run(params, opt_state, x, y, indices, noise_key, t)
    real, slots = canaries.split(indices)
    extra = canaries.clipped_sum(slots)
    return run(params, opt_state, x, y, real, noise_key, t, extra_sum=extra)


class RecordOneBehind:
    """Ledger records one step behind the device: step t is recorded after step t + 1
    is queued, so the host's sampling, batching and ledger write overlap the device's
    work instead of leaving it idle between steps.

    ``push(t, indices, pending)`` records the step pushed before (waiting for its
    statistics) and keeps this one; :meth:`settle` records the one kept.  The loop
    settles before every checkpoint (write-ahead still holds: a checkpoint's steps
    are in the ledger first), before stopping on Ctrl-C and at the end; after an
    error, :meth:`settle_quietly` records the kept step if it finished.  A step is
    recorded once its statistics are fetched, before anything of it is shown.
    """

    def __init__(self, record: Any) -> None:
        """``record(t, indices, stats)`` is called once per step, in step order."""
        self._record = record
        self._kept: tuple[int, np.ndarray, Any] | None = None

    def push(self, t: int, indices: np.ndarray, pending: Any) -> None:
        self.settle()
        self._kept = (t, indices, pending)

    def settle(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            t, indices, pending = kept
            self._record(t, indices, pending.result())

    def settle_quietly(self) -> None:
        kept, self._kept = self._kept, None
        if kept is None:
            return
        t, indices, pending = kept
        try:
            stats = pending.result()
        except Exception:  # the step itself failed: nothing of it was released
            return
        with contextlib.suppress(Exception):  # the error being handled matters more
            self._record(t, indices, stats)


def _shared_step(run: Any, t: int) -> Any:
    """``run()``, step t of a multi-process job; a failed collective becomes :class:`PeerFailed`."""
    from dpverify.errors import DpverifyError
    from trainers.distributed import PeerFailed, maybe_fail_at

    maybe_fail_at(t)
    try:
        return run()
    except DpverifyError:
        raise
    except Exception as exc:
        import jax

        text = " ".join(str(exc).split())[:200]
        raise PeerFailed(
            f"process {jax.process_index()}: step {t} failed ({type(exc).__name__}: {text}); "
            "another process of the job probably stopped. Every recorded step is kept: "
            "rerun the same command with --resume"
        ) from None


def _host(tree: Any) -> Any:
    import jax

    return jax.device_get(tree)


def _process_count(session: Session) -> int:
    if not session.shared:
        return 1
    import jax

    return jax.process_count()


def _step_record(t: int, indices: np.ndarray, plan: RunPlan, stats: Any) -> Any:
    from dpverify.ledger import Step

    sketch = getattr(stats, "update_sketch", None)
    return Step(
        step=t,
        indices=indices,
        clip_norm=plan.clip_norm,
        noise_multiplier=plan.noise_multiplier,
        noise_std=_float(stats.noise_std),
        noise_draws=_int(stats.noise_draws),
        num_clipped=_int(stats.num_clipped),
        max_grad_norm=_float(stats.max_grad_norm),
        max_clipped_norm=_float(stats.max_clipped_norm),
        denominator=_float(stats.denominator),
        physical_batches=_int(stats.physical_batches),
        update_sketch=None if sketch is None else tuple(np.asarray(sketch, dtype=float).ravel()),
        num_nonfinite=_int(getattr(stats, "num_nonfinite", None)),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _close_quietly(writer: Any) -> None:
    try:
        writer.close()
    except Exception:  # the original error matters more
        pass


def _head(writer: Any) -> str | None:
    try:
        return str(writer.head)
    except Exception:
        return None


def _accuracy(model_apply: Any, params: Any, dataset: Any, *, batch: int = 1024) -> float | None:
    """Held-out accuracy, in fixed-shape chunks (one compilation)."""
    import jax
    import jax.numpy as jnp

    x, y = dataset.x_test, dataset.y_test
    n = len(x)
    if n == 0:
        return None
    b = min(batch, n)
    predict = jax.jit(lambda p, xb: jnp.argmax(model_apply(p, xb), axis=-1))
    correct = 0
    for i in range(0, n, b):
        xb = np.asarray(x[i : i + b])
        m = len(xb)
        if m < b:
            xb = np.concatenate([xb, np.repeat(xb[:1], b - m, axis=0)])
        pred = np.asarray(predict(params, xb))[:m]
        correct += int(np.sum(pred == np.asarray(y[i : i + m])))
    return correct / n


def _write_json(path: Path, obj: Any) -> None:
    from trainers.noise_key import write_private_file

    text = json.dumps(finite(obj), indent=2, sort_keys=False, default=_json_default)
    # 0600: the summary holds unnoised statistics (the last batch's loss).
    write_private_file(path, text.encode() + b"\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/summary.json``."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnusableInput(f"{path} cannot be read: {exc}") from None
