"""``record(...)``: write a dpverify ledger from an ordinary Opacus training loop.

The recorder observes Opacus without changing what it computes:

* a tap on the data loader's batch sampler queues each batch's indices
  (empty Poisson batches included); the optimiser step that adds noise pops
  the oldest queued batch — that is the logical step's batch;
* ``clip_and_accumulate`` is wrapped to measure the per-example gradient
  norms *before* Opacus clips them (count above C, maximum) and how many
  examples the step really saw (checked against the batch's size, which is
  how gradient accumulation over several batches is refused);
* ``add_noise`` is wrapped to set ``optimizer.generator`` — an attribute
  Opacus exposes for exactly this — to the step's generator derived from the
  run's secret noise key, and to count noise draws and read σ·C;
* every ``checkpoint_every`` steps, and at the start and the end, the model
  and optimiser state are saved after the ledger is durable (write-ahead).

On a clean exit the ledger is sealed with the engine's own ε at ``delta``;
on an exception it is closed unsealed and the exception propagates.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_probability
from dpverify.errors import InvalidArgument
from dpverify.integrations._errors import UnsupportedRun
from dpverify.integrations.opacus import _artifacts as art
from dpverify.integrations.opacus._config import (
    check_supported,
    describe_sampling,
    software_versions,
)
from dpverify.integrations.opacus._tap import install_tap, remove_tap
from dpverify.ledger import Checkpoint, LedgerWriter, RunHeader, Seal, Step

__all__ = ["LOSSES", "Recording", "record"]

#: Per-example losses the auditor's reference knows (``torch.nn.functional`` names).
LOSSES = ("cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits")


@dataclasses.dataclass
class Recording:
    """What a recording produced (filled in as the run goes).

    Attributes:
        run_dir: the run directory (``dpverify audit RUN_DIR`` audits it).
        steps: logical steps recorded so far.
        epsilon: the engine's ε at ``delta`` written to the seal (after exit).
        sealed: whether the ledger was sealed (clean exit).
    """

    run_dir: Path
    steps: int = 0
    epsilon: float | None = None
    sealed: bool = False


@contextlib.contextmanager
def record(
    run_dir: str | Path,
    *,
    privacy_engine: Any,
    model: Any,
    optimizer: Any,
    data_loader: Any,
    delta: float,
    checkpoint_every: int | None = 25,
    loss: str = "cross_entropy",
    save_data: bool = True,
    task: str | None = None,
) -> Iterator[Recording]:
    """Record an Opacus run into ``run_dir`` (a new directory).

    Args:
        run_dir: directory to create (must not hold a ledger already).
        privacy_engine: the ``PrivacyEngine`` whose ``make_private`` built the
            three objects below; its accountant gives the sealed claim.
        model: the ``GradSampleModule`` returned by ``make_private``.
        optimizer: the ``DPOptimizer`` returned by ``make_private``.
        data_loader: the data loader returned by ``make_private``.
        delta: δ of the claim (the seal holds the engine's ε at this δ).
        checkpoint_every: save a checkpoint every this many steps (also at
            step 0 and at the end); ``None`` saves only those two.
        loss: the per-example loss the loop uses, by its
            ``torch.nn.functional`` name (one of :data:`LOSSES`); the auditor's
            replay recomputes gradients with it.
        save_data: save the training tensors in the run directory (mode 0600)
            so the auditor can replay; without them replay is skipped.
        task: free-form task name for the header.

    Yields:
        a :class:`Recording`.

    Raises:
        UnsupportedRun: a configuration the recorder cannot certify (one line).
        InvalidArgument: bad ``delta``, ``checkpoint_every`` or ``loss``.
    """
    delta = check_probability("delta", delta, allow_one=False)
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    if loss not in LOSSES:
        raise InvalidArgument(f"loss={loss!r} must be one of {', '.join(LOSSES)}")
    check_supported(privacy_engine, optimizer, data_loader)
    sampling = describe_sampling(data_loader)
    module = getattr(model, "_module", model)
    rec = _Recorder(
        Path(run_dir), privacy_engine, module, optimizer, data_loader, delta,
        checkpoint_every, loss, save_data, task, sampling,
    )  # fmt: skip
    try:
        yield rec.result
    except BaseException:
        rec.abort()
        raise
    rec.finish()


class _Recorder:
    def __init__(self, run_dir, engine, module, optimizer, loader, delta, every, loss,
                 save_data, task, sampling) -> None:  # fmt: skip
        self.run_dir, self.engine, self.module = run_dir, engine, module
        self.optimizer, self.loader, self.delta, self.every = optimizer, loader, delta, every
        self.result = Recording(run_dir=run_dir)
        if (run_dir / "ledger").exists():
            raise InvalidArgument(f"run_dir={str(run_dir)!r} already holds a ledger")
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.key, key_digest = art.create_noise_key(run_dir)
        header = self._header(loss, save_data, task, sampling, key_digest)
        self.writer = LedgerWriter.create(run_dir / "ledger", header)
        self.step = 0
        self._reset_step_stats()
        self.tap = install_tap(loader)
        self._wrap_optimizer()
        self._checkpoint()

    # ------------------------------------------------------------ header

    def _header(self, loss, save_data, task, sampling, key_digest) -> RunHeader:
        opt = self.optimizer
        names = {id(p): n for n, p in self.module.named_parameters()}
        order = [p for g in opt.original_optimizer.param_groups for p in g["params"]]
        if any(id(p) not in names for p in order):
            raise UnsupportedRun("the optimiser holds parameters that are not the model's")
        denominator = float(opt.expected_batch_size) if opt.loss_reduction == "mean" else 1.0
        extra: dict[str, Any] = {
            "framework": "opacus",
            "optimizer": type(opt.original_optimizer).__name__,
            "optimizer_module": type(opt.original_optimizer).__module__,
            "dp_optimizer": type(opt).__name__,
            "loss": loss,
            "loss_reduction": opt.loss_reduction,
            "param_names": [names[id(p)] for p in order],
            "frozen": [names[id(p)] for p in order if not p.requires_grad],
            "param_dtype": str(order[0].dtype).replace("torch.", "") if order else "float32",
            "opacus_sample_rate": sampling["opacus_sample_rate"],
            "noise_rule": art.NOISE_DOMAIN.decode(),
        }
        fingerprint = None
        first = self._example_input()
        if first is not None:
            rel, digest_or_why = art.export_model(self.run_dir, self.module, first)
            extra["model_file"] = rel
            extra["model_digest" if rel else "model_export_failed"] = digest_or_why
        if save_data:
            rel, fingerprint, why = art.snapshot_data(self.run_dir, self.loader.dataset)
            extra["data_file"] = rel
            if rel is None:
                extra["data_snapshot_failed"] = why
        return RunHeader(
            dataset_size=sampling["dataset_size"],
            sampler=sampling["sampler"],
            sampler_params=sampling["sampler_params"],
            sampling_rate=sampling["sampling_rate"],
            noise_multiplier=float(opt.noise_multiplier),
            clip_norm=float(opt.max_grad_norm),
            delta=self.delta,
            accountant=f"opacus-{self.engine.accountant.mechanism()}",
            expected_batch_size=denominator,
            precision="float32" if extra["param_dtype"] == "float32" else extra["param_dtype"],
            task=task or f"opacus-{type(self.module).__name__}",
            software=software_versions(),
            dataset_fingerprint=fingerprint,
            noise_key_digest=key_digest,
            extra=extra,
        )

    def _example_input(self) -> Any:
        import torch

        try:
            item = self.loader.dataset[0]
            x = item[0] if isinstance(item, (tuple, list)) else item
            return torch.as_tensor(x).unsqueeze(0)
        except Exception:
            return None

    # ------------------------------------------------------------ hooks

    def _reset_step_stats(self) -> None:
        self.seen = 0
        self.passes = 0
        self.num_clipped = 0
        self.max_norm = 0.0
        self.draws = 0
        self.noise_std: float | None = None

    def _wrap_optimizer(self) -> None:
        opt = self.optimizer
        orig_clip, orig_noise, orig_step = opt.clip_and_accumulate, opt.add_noise, opt.step
        self._originals = ("clip_and_accumulate", "add_noise", "step")

        def clip_and_accumulate() -> Any:
            self._measure_norms()
            return orig_clip()

        def add_noise() -> Any:
            opt.generator = art.noise_generator(self.key, self.step)
            self.draws += 1
            self.noise_std = float(opt.noise_multiplier) * float(opt.max_grad_norm)
            self.sigma, self.clip = float(opt.noise_multiplier), float(opt.max_grad_norm)
            return orig_noise()

        def step(*args: Any, **kwargs: Any) -> Any:
            out = orig_step(*args, **kwargs)
            if self.draws:
                self._record_step()
            return out

        opt.clip_and_accumulate, opt.add_noise, opt.step = clip_and_accumulate, add_noise, step

    def _measure_norms(self) -> None:
        import torch

        opt = self.optimizer
        if opt.accumulated_iterations > 1:
            raise UnsupportedRun(
                f"gradient accumulation over {opt.accumulated_iterations} backward passes per "
                "optimizer step: the step's batch is not one sample at rate q (use Opacus's "
                "BatchMemoryManager for large logical batches)"
            )
        with torch.no_grad():
            samples = opt.grad_samples
            n = int(samples[0].shape[0]) if samples else 0
            if n:
                sq = sum(g.reshape(n, -1).double().pow(2).sum(dim=1) for g in samples)
                norms = sq.sqrt()
                self.num_clipped += int((norms > float(opt.max_grad_norm)).sum())
                self.max_norm = max(self.max_norm, float(norms.max()))
            self.seen += n
            self.passes += 1

    def _record_step(self) -> None:
        if not self.tap.queue:
            raise UnsupportedRun(
                "the optimizer stepped without a batch from the recorded data loader: iterate "
                "the loader passed to record() inside the with-block"
            )
        indices = np.sort(self.tap.queue.popleft())
        if indices.size != self.seen:
            raise UnsupportedRun(
                f"step {self.step}: the optimizer saw {self.seen} examples but the data loader's "
                f"batch had {indices.size}: gradient accumulation, a skipped batch or a second "
                "loader cannot be certified"
            )
        header = self.writer.header
        self.writer.append(
            Step(
                step=self.step,
                indices=indices,
                noise_multiplier=None if self.sigma == header.noise_multiplier else self.sigma,
                clip_norm=None if self.clip == header.clip_norm else self.clip,
                noise_std=self.noise_std,
                noise_draws=self.draws,
                num_clipped=self.num_clipped,
                max_grad_norm=self.max_norm if self.seen else None,
                denominator=header.expected_batch_size,
                physical_batches=self.passes,
            )
        )
        self.step += 1
        self.result.steps = self.step
        self._reset_step_stats()
        if self.every is not None and self.step % self.every == 0:
            self._checkpoint()

    def _checkpoint(self) -> None:
        self.writer.flush()  # write-ahead: every step the state reflects is durable first
        rel, digest = art.save_checkpoint(
            self.run_dir, self.step, self.module, self.optimizer.original_optimizer
        )
        self.writer.append(Checkpoint(step=self.step, digest=digest, path=rel))
        self.last_checkpoint = self.step

    # ------------------------------------------------------------ exit

    def _restore(self) -> None:
        for name in self._originals:
            self.optimizer.__dict__.pop(name, None)
        self.optimizer.generator = None
        remove_tap(self.loader, self.tap)

    def finish(self) -> None:
        try:
            if self.last_checkpoint != self.step:
                self._checkpoint()
            epsilon = float(self.engine.get_epsilon(self.delta)) if self.step else 0.0
            self.writer.close(
                seal=Seal(
                    steps_executed=self.step,
                    final_step=self.step,
                    claimed_epsilon=epsilon,
                    delta=self.delta,
                )
            )
            self.result.epsilon, self.result.sealed = epsilon, True
        finally:
            self._restore()

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self._restore()
