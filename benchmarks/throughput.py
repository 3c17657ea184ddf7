"""Throughput of non-private SGD, vmap DP-SGD and the full masked DP-SGD trainer.

One run, the same model and the same physical batch size p for all three modes,
on synthetic data held on the device (random images and labels: throughput does
not depend on the values):

* ``nonprivate`` — one jitted step: mean cross-entropy over a batch of p
  examples, ``grad``, Optax update.
* ``dpsgd_vmap`` — one jitted DP-SGD step over a full physical batch of p
  examples: per-example gradients by ``vmap(grad)``, global-norm clipping,
  masked sum (``where``), Gaussian noise σC, fixed denominator, Optax update.
  This is the "JAX DP-SGD, vmap per-example, masked" row of the reference below.
  It pays the noise and the optimiser update for every p examples; the masked
  trainer pays them once per logical step of ≈ E/p physical batches, so it can
  be slightly faster per example despite its padding.
* ``masked_trainer`` — the real thing: :class:`dpverify.samplers.PoissonSampler`
  draws each logical batch (expected size E = ``--expected-batch-size``), the
  :class:`trainers.dpsgd.MaskedDPSGD` runs ⌈L/p⌉ physical batches and the
  noise and update (one dispatch, or k + 2 for a CNN on CPU), and every step is appended to a real ledger
  (:class:`dpverify.ledger.LedgerWriter`, fsync every 64 steps and at close;
  at least ``--min-trainer-steps`` (128: two group commits) steps are timed,
  and the final close is included).
  Examples per second count real (sampled) examples only, so padding of the
  last physical batch is a cost here (``physical_examples_per_second`` counts
  the rows computed on, padding included).  The time is split into sampling, the
  DP-SGD step and ledger writing; ``ledger_share`` is the ledger's part of the
  total (target < 2%).  The trainer's last physical batch runs as a tail batch
  of p/2 rows when it fits (:mod:`trainers.dispatch`); ``--compare-tail`` also
  times each trainer without it and prints ``tail_gain_<m>``.  The trainer and
  the bare ``dpsgd_<m>`` step compile with the trainer's default per-compilation
  XLA options (:mod:`trainers.xla_options`: on XLA:CPU under ghost clipping,
  matrix products only as library fusions); ``--compare-xla-options`` also
  times each trainer, and each bare step that has options, compiled with
  XLA's defaults (``masked_trainer_<m>_xla_defaults``,
  ``dpsgd_<m>_xla_defaults``) and prints ``xla_options_gain_<m>``.

* ``dpsgd_ghost`` — the same step as ``dpsgd_vmap`` with ghost clipping
  (:mod:`trainers.clipping`): per-example norms from one backward pass, the
  clipped sum by book-keeping, no per-example gradients.
* ``--clipping vmap,ghost`` (default) runs ``dpsgd_<m>`` and
  ``masked_trainer`` with ``DPSGDConfig(clipping=m)`` for each listed m.

Each mode is compiled and warmed up first, then timed for at least
``--seconds`` of wall-clock time (whole steps, device synchronised); with
``--rounds R`` the modes are timed R times in turn and the best of each is
kept (on a shared, loaded machine this compares the modes under the same
load).  ``load_average`` (``os.getloadavg``) is recorded with every line.

Memory: ``xla_peak_bytes`` of each jitted step is XLA's own buffer plan for the
compiled function (arguments + outputs + temporaries − aliased; from
``Compiled.memory_analysis()``), at the benchmarked p and, for
``--memory-batch M`` (default 256), at p = M (compiled, not run).  It does not
depend on the machine's load.

Output: one JSON line per (model, mode) with ``examples_per_second``, then one
per model with the ratios (``dpsgd_<m>/nonprivate``,
``masked_trainer_<m>/nonprivate``, ``memory_<m>/nonprivate``) and
``ledger_share``.

Usage::

    python benchmarks/throughput.py                 # CPU: tiny CNN and ViT, 16×16×3
    python benchmarks/throughput.py --device gpu    # ViT-Small-like (width 384, depth 6,
                                                    # patch 4, 32×32×3, p=128, TF32) and the
                                                    # CIFAR-10 CNN (p=256, TF32); < 5 min on one GPU
    python benchmarks/throughput.py --models vit --seconds 5 --out results.jsonl
    python benchmarks/throughput.py --models cnn,vit,text --clipping vmap,ghost --rounds 2

Multi-process scaling (``--num-processes 1,2,4``): the whole trainer
(``dpverify train`` through ``dpverify launch -n P``: sampling, the masked
step with cross-process all-reduce, process 0 writing the ledger) on
``--task`` (default ``digits-cnn``), the same logical and physical batches for
every P (strong scaling: each of the P devices computes p/P rows of every
physical batch).  One JSON line per P with ``examples_per_second`` (after the
first, compiling step) and ``scaling`` (relative to the smallest P).  On a
CPU-only machine the P processes share the same cores, so the numbers show
only the overhead of the collectives, not a speed-up; on a multi-GPU host
pass ``--device gpu`` (each process gets one GPU: ``launch --gpus-per-process 1``).

Reference (design measurement, one H200, TF32): ViT-Small-like non-private
18 660 ex/s, vmap DP-SGD 11 470 ex/s (ratio 0.61); CNN with GroupNorm at batch
256: 244 600 vs 44 600 ex/s (0.18).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

CLIP_NORM = 1.0
NOISE_MULTIPLIER = 1.0
LEARNING_RATE = 1e-3
GROUP_COMMIT = 64  # the ledger's default: fsync every 64 steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """One benchmarked model and its batch sizes."""

    name: str
    kwargs: dict[str, Any]
    image_shape: tuple[int, int, int]
    physical_batch_size: int
    expected_batch_size: int
    dataset_size: int


_TINY_VIT = {"patch_size": 4, "width": 64, "depth": 2, "num_heads": 4, "mlp_dim": 128}
_VIT_SMALL = {"patch_size": 4, "width": 384, "depth": 6, "num_heads": 6, "mlp_dim": 1536}
TEXT_VOCAB = 8192
_TINY_TEXT = {"vocab_size": TEXT_VOCAB, "width": 64, "depth": 2, "num_heads": 4, "mlp_dim": 128}
_TEXT_SMALL = {"vocab_size": TEXT_VOCAB, "width": 384, "depth": 6, "num_heads": 6, "mlp_dim": 1536}
# (device, model) → (model kwargs, image shape, p, E, N); the GPU ViT is the reference's.
_TABLE: dict[tuple[str, str], tuple[dict[str, Any], tuple[int, int, int], int, int, int]] = {
    ("gpu", "cnn"): ({"channels": (32, 64, 128), "groups": 8}, (32, 32, 3), 256, 1024, 50_000),
    ("gpu", "vit"): (_VIT_SMALL, (32, 32, 3), 128, 512, 50_000),
    ("cpu", "cnn"): ({"channels": (16, 32), "groups": 4}, (16, 16, 3), 32, 128, 4096),
    ("cpu", "vit"): (_TINY_VIT, (16, 16, 3), 32, 128, 4096),
    # text: (model kwargs, (tokens,), p, E, N); vocabulary TEXT_VOCAB
    ("gpu", "text"): (_TEXT_SMALL, (128,), 128, 512, 50_000),
    ("cpu", "text"): (_TINY_TEXT, (64,), 32, 128, 4096),
    # mlp: the digits MLP's shape (8×8 inputs, one hidden layer of 64)
    ("gpu", "mlp"): ({"hidden": (512, 512)}, (32, 32, 3), 256, 1024, 50_000),
    ("cpu", "mlp"): ({"hidden": (64,)}, (8, 8, 1), 32, 128, 4096),
}


def _setups(device: str, models: list[str], args: argparse.Namespace) -> list[Setup]:
    out = []
    for name in models:
        kwargs, shape, p, e, n = _TABLE[(device, name)]
        out.append(
            Setup(
                name=name,
                kwargs=dict(kwargs),
                image_shape=shape,
                physical_batch_size=args.physical_batch_size or p,
                expected_batch_size=args.expected_batch_size or e,
                dataset_size=n,
            )
        )
    return out


def _model(setup: Setup):
    from trainers.models import CNN, MLP, TextTransformer, ViT

    cls = {"cnn": CNN, "vit": ViT, "text": TextTransformer, "mlp": MLP}[setup.name]
    return cls(num_classes=10, **setup.kwargs)


def _data(setup: Setup):
    import numpy as np

    rng = np.random.default_rng(0)
    n = setup.dataset_size
    if setup.name == "text":
        x = rng.integers(1, TEXT_VOCAB, size=(n, *setup.image_shape)).astype(np.int32)
    else:
        x = rng.uniform(size=(n, *setup.image_shape)).astype(np.float32)
    return x, rng.integers(0, 10, size=n).astype(np.int32)


def _emit(record: dict[str, Any], out: Any) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def _timed(run_one, seconds: float, min_iters: int = 3, drain=None) -> tuple[int, float]:
    """Run ``run_one()`` until ``seconds`` elapsed; (iterations, time).

    ``run_one`` must synchronise, or leave work queued that ``drain()`` waits
    for: it is called inside the timed window, so a round's work never runs
    into the next mode's."""
    iters, start = 0, time.perf_counter()
    while True:
        run_one()
        iters += 1
        if time.perf_counter() - start >= seconds and iters >= min_iters:
            if drain is not None:
                drain()
            return iters, time.perf_counter() - start


def _nonprivate_step(model, opt, x_dev, y_dev, p: int):
    """``step(params, opt_state, idx, key)``: mean loss over p examples, grad, update."""
    import jax
    import jax.numpy as jnp
    import optax

    def step(params, opt_state, idx, key):
        del key  # no noise
        xb, yb = jnp.take(x_dev, idx, axis=0), jnp.take(y_dev, idx, axis=0)

        def loss(p_):
            logits = model.apply({"params": p_}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def _dpsgd_vmap_step(model, opt, x_dev, y_dev, p: int):
    """``step(params, opt_state, idx, key)``: vmap per-example grads, clip, masked sum,
    noise σC, divide by p, update — one full DP-SGD step per physical batch."""
    import jax
    import jax.numpy as jnp
    import optax

    mask = jnp.ones((p,), bool)

    def step(params, opt_state, idx, key):
        xb, yb = jnp.take(x_dev, idx, axis=0), jnp.take(y_dev, idx, axis=0)

        def example_loss(p_, x, y):
            logits = model.apply({"params": p_}, x[None])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[None])[0]

        grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, xb, yb)
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        sq = sum(jnp.sum(jnp.square(g.reshape(p, -1)), axis=1) for g in leaves)
        factor = CLIP_NORM / jnp.maximum(jnp.sqrt(sq), CLIP_NORM)
        noisy = []
        for g, k in zip(leaves, jax.random.split(key, len(leaves)), strict=True):
            shape = (p,) + (1,) * (g.ndim - 1)
            total = jnp.sum(jnp.where(mask.reshape(shape), g * factor.reshape(shape), 0.0), axis=0)
            z = jax.random.normal(k, total.shape, total.dtype)
            noisy.append((total + NOISE_MULTIPLIER * CLIP_NORM * z) / p)
        grads = jax.tree_util.tree_unflatten(treedef, noisy)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def _dpsgd_ghost_step(model, opt, x_dev, y_dev, p: int):
    """``step(params, opt_state, idx, key)``: as :func:`_dpsgd_vmap_step` with
    ghost clipping (norms without per-example gradients, book-keeping sum)."""
    import jax
    import jax.numpy as jnp
    import optax

    from trainers.clipping import GhostClipping
    from trainers.losses import softmax_cross_entropy

    mask = jnp.ones((p,), bool)
    cache: dict[str, Any] = {}

    def step(params, opt_state, idx, key):
        xb, yb = jnp.take(x_dev, idx, axis=0), jnp.take(y_dev, idx, axis=0)
        if "ghost" not in cache:
            trainable = tuple(True for _ in jax.tree_util.tree_leaves(params))
            cache["ghost"] = GhostClipping(
                lambda p_, x: model.apply({"params": p_}, x), softmax_cross_entropy, trainable
            )
        out = cache["ghost"](params, xb, yb)
        finite = jnp.isfinite(out.norms)
        factor = jnp.where(finite, CLIP_NORM / jnp.maximum(out.norms, CLIP_NORM), 0.0)
        sums = out.weighted_sum(factor, mask & finite)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        noisy = []
        for total, k in zip(sums, jax.random.split(key, len(leaves)), strict=True):
            z = jax.random.normal(k, total.shape, total.dtype)
            noisy.append((total + NOISE_MULTIPLIER * CLIP_NORM * z) / p)
        grads = jax.tree_util.tree_unflatten(treedef, noisy)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


_STEPS = {"vmap": _dpsgd_vmap_step, "ghost": _dpsgd_ghost_step}


def _step_options(make_step) -> dict[str, str] | None:
    """The per-compilation XLA options the masked trainer would use for this bare step
    (:func:`trainers.xla_options.step_options`; ``None``: XLA's defaults)."""
    import jax

    from trainers.xla_options import step_options

    method = next((m for m, f in _STEPS.items() if f is make_step), "none")
    return step_options(method, jax.default_backend()) or None


def _xla_peak_bytes(make_step, model, params, x_dev, y_dev, p, precision) -> int | None:
    """XLA's planned peak (arguments + outputs + temporaries − aliased) of the step at p."""
    import jax
    import numpy as np
    import optax

    from trainers.precision import precision_context

    opt = optax.adam(LEARNING_RATE)
    fn = jax.jit(
        make_step(model, opt, x_dev, y_dev, p),
        donate_argnums=(0, 1),
        compiler_options=_step_options(make_step),
    )
    with precision_context(precision):
        compiled = fn.lower(
            params, opt.init(params), np.zeros((p,), np.int32), jax.random.PRNGKey(0)
        ).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def _prepare_jitted(make_step, model, params, x_dev, y_dev, p, precision, options=None):
    """Compile and warm up the step ``make_step`` builds; returns ``(run_one, compile_s)``.

    ``options``: per-compilation XLA options (``None``: the trainer's for this
    step, :func:`_step_options`; ``{}``: XLA's defaults)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from trainers.precision import precision_context

    opt = optax.adam(LEARNING_RATE)
    fn = jax.jit(
        make_step(model, opt, x_dev, y_dev, p),
        donate_argnums=(0, 1),
        compiler_options=_step_options(make_step) if options is None else (options or None),
    )
    rng = np.random.default_rng(0)
    n, key = x_dev.shape[0], jax.random.PRNGKey(0)
    state = {"params": jax.tree_util.tree_map(jnp.copy, params), "t": 0}
    state["opt"] = opt.init(state["params"])

    def run_one():
        idx = rng.integers(0, n, size=p).astype(np.int32)
        state["t"] += 1
        k = jax.random.fold_in(key, state["t"])
        with precision_context(precision):
            state["params"], state["opt"] = fn(state["params"], state["opt"], idx, k)
        jax.block_until_ready(state["params"])

    t0 = time.perf_counter()
    run_one()  # compile + first step
    compile_s = time.perf_counter() - t0
    run_one()
    return run_one, compile_s


class _MaskedTrainerBench:
    """The real masked trainer + Poisson sampler + ledger, timed in rounds."""

    def __init__(
        self,
        model,
        params,
        x_np,
        y_np,
        setup,
        precision,
        ledger_dir,
        clipping,
        tail=None,
        compiler_options=None,
    ):
        import jax
        import jax.numpy as jnp
        import optax

        from dpverify.ledger import LedgerWriter, RunHeader
        from dpverify.samplers import PoissonSampler
        from trainers.dpsgd import DPSGDConfig, MaskedDPSGD
        from trainers.loop import RecordOneBehind

        n, p, e = setup.dataset_size, setup.physical_batch_size, setup.expected_batch_size
        self.q, self.e, self.p = e / n, e, p
        opt = optax.adam(LEARNING_RATE)
        config = DPSGDConfig(
            clip_norm=CLIP_NORM,
            noise_multiplier=NOISE_MULTIPLIER,
            denominator=self.q * n,
            physical_batch_size=p,
            precision=precision,
            clipping=clipping,
        )
        self.trainer = MaskedDPSGD(
            lambda p_, x: model.apply({"params": p_}, x),
            opt,
            config,
            tail_batch_size=tail,
            compiler_options=compiler_options,
        )
        self.sampler = PoissonSampler(n, self.q, seed=1)
        header = RunHeader(
            dataset_size=n,
            sampler="poisson",
            sampling_rate=self.q,
            noise_multiplier=NOISE_MULTIPLIER,
            clip_norm=CLIP_NORM,
            delta=1e-5,
            expected_batch_size=self.q * n,
            physical_batch_size=p,
            precision=precision,
            task=f"benchmark-{setup.name}",
            extra={"clipping": clipping},
        )
        self.key = jax.random.PRNGKey(0)
        self.x_dev, self.y_dev = jnp.asarray(x_np), jnp.asarray(y_np)
        self.state = {"params": jax.tree_util.tree_map(jnp.copy, params), "t": 0}
        self.state["opt"] = opt.init(self.state["params"])
        self.timing = {"sample": 0.0, "step": 0.0, "ledger": 0.0, "examples": 0, "padded": 0}
        self.ledger_dir = ledger_dir
        self.writer = LedgerWriter.create(ledger_dir, header, group_commit=GROUP_COMMIT)
        self._append_seconds = 0.0
        self.behind = RecordOneBehind(self._append)
        self.best: dict[str, Any] | None = None
        t0 = time.perf_counter()
        self.run_one(record=False)  # compile
        self.compile_s = time.perf_counter() - t0
        # Every tail size too: one first used in a timed round would charge it compilation.
        st = self.state
        self.trainer.precompile(st["params"], st["opt"], self.x_dev, self.y_dev)
        for _ in range(2):
            self.run_one(record=False)
        self.drain()
        self.timing.update(step=0.0, ledger=0.0)

    def run_one(self, record: bool = True) -> None:
        """Sample and queue step t, then record step t − 1 (as trainers.loop does: the
        host's work overlaps the device's).  "step" time is the dispatch plus the
        wait for step t − 1's statistics; "ledger" time is the append alone."""
        st, timing = self.state, self.timing
        t = st["t"]
        t0 = time.perf_counter()
        idx = self.sampler.sample(t)
        t1 = time.perf_counter()
        st["params"], st["opt"], pending = self.trainer.step_async(
            st["params"], st["opt"], self.x_dev, self.y_dev, idx, self.key, t
        )
        appending = self._append_seconds
        self.behind.push(t, idx, pending)
        t2 = time.perf_counter()
        st["t"] = t + 1
        if record:
            appended = self._append_seconds - appending
            timing["sample"] += t1 - t0
            timing["step"] += t2 - t1 - appended
            timing["ledger"] += appended
            timing["examples"] += idx.size
            timing["padded"] += self._rows_computed(idx.size, -(-idx.size // self.p))

    def _append(self, t: int, idx: Any, stats: Any) -> None:
        from dpverify.ledger import Step

        t0 = time.perf_counter()
        self.writer.append(Step(step=t, indices=idx, **stats.ledger_fields()))
        self._append_seconds += time.perf_counter() - t0

    def drain(self) -> None:
        """Wait for the step in flight and record it."""
        appending = self._append_seconds
        t0 = time.perf_counter()
        self.behind.settle()
        appended = self._append_seconds - appending
        self.timing["step"] += time.perf_counter() - t0 - appended
        self.timing["ledger"] += appended

    def _rows_computed(self, batch_size: int, k: int) -> int:
        """Rows the step computed on: k − 1 full batches and a last one of p, or of p_t
        when it ran as a tail batch (:meth:`MaskedDPSGD.tail_for`)."""
        if k == 0:
            return 0
        return (k - 1) * self.p + (self.trainer.tail_for(batch_size) or self.p)

    def time_round(self, seconds: float, min_steps: int) -> None:
        before = dict(self.timing)
        iters, elapsed = _timed(self.run_one, seconds, min_iters=min_steps, drain=self.drain)
        rate = (self.timing["examples"] - before["examples"]) / elapsed
        if self.best is None or rate > self.best["examples_per_second"]:
            self.best = {
                "examples_per_second": rate,
                "physical_examples_per_second": (self.timing["padded"] - before["padded"])
                / elapsed,
                "steps": iters,
            }

    def finish(self) -> dict[str, Any]:
        from dpverify.ledger import Seal

        self.drain()
        t0 = time.perf_counter()
        t = self.state["t"]
        self.writer.close(seal=Seal(steps_executed=t, final_step=t))
        close_s = time.perf_counter() - t0
        timing = self.timing
        timing["ledger"] += close_s
        total = timing["sample"] + timing["step"] + timing["ledger"]
        assert self.best is not None
        return {
            **self.best,
            "compile_s": self.compile_s,
            "compilations": self.trainer.compilations,
            "clipping": self.trainer.clipping,
            "tail_batch_size": self.trainer.tail_batch_size,
            "compiler_options": self.trainer.compiler_options,
            "sampling_rate": self.q,
            "expected_batch_size": self.e,
            "seconds_sampling": timing["sample"],
            "seconds_step": timing["step"],
            "seconds_ledger": timing["ledger"],
            "seconds_ledger_close": close_s,
            "ledger_share": timing["ledger"] / total,
            "ledger_bytes": sum(f.stat().st_size for f in self.ledger_dir.iterdir() if f.is_file()),
        }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the benchmark described by ``args``; returns the emitted records."""
    import os

    import jax

    records: list[dict[str, Any]] = []
    out = open(args.out, "a") if args.out else None
    backend = jax.default_backend()
    if args.device == "gpu" and backend != "gpu" and not args.any_backend:
        raise SystemExit(f"--device gpu but JAX's backend is {backend!r} (--any-backend to force)")
    precision = args.precision or ("tf32" if args.device == "gpu" else "float32")
    device_name = str(jax.devices()[0].device_kind)

    def emit(record):
        record = {**record, "load_average": list(os.getloadavg())}
        records.append(record)
        _emit(record, out)

    try:
        for setup in _setups(args.device, args.models, args):
            model = _model(setup)
            x, y = _data(setup)
            params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"]
            n_params = int(sum(a.size for a in jax.tree_util.tree_leaves(params)))
            base = {
                "model": setup.name,
                "params": n_params,
                "input_shape": list(setup.image_shape),
                "physical_batch_size": setup.physical_batch_size,
                "precision": precision,
                "device": device_name,
            }
            x_dev, y_dev = jax.device_put(x), jax.device_put(y)
            p = setup.physical_batch_size
            steps = {"nonprivate": _nonprivate_step}
            steps.update({f"dpsgd_{m}": _STEPS[m] for m in args.clipping})
            runners, info = {}, {}
            for mode, make in steps.items():
                runners[mode], compile_s = _prepare_jitted(
                    make, model, params, x_dev, y_dev, p, precision
                )
                info[mode] = {"compile_s": compile_s}
                for batch in sorted({p, args.memory_batch}):
                    info[mode][f"xla_peak_bytes_p{batch}"] = _xla_peak_bytes(
                        make, model, params, x_dev, y_dev, batch, precision
                    )
                info[mode]["compiler_options"] = _step_options(make) or {}
            if args.compare_xla_options:  # the bare steps that have options, without them
                for m in args.clipping:
                    if _step_options(_STEPS[m]):
                        mode = f"dpsgd_{m}_xla_defaults"
                        runners[mode], compile_s = _prepare_jitted(
                            _STEPS[m], model, params, x_dev, y_dev, p, precision, options={}
                        )
                        info[mode] = {"compile_s": compile_s, "compiler_options": {}}
            with tempfile.TemporaryDirectory() as tmp:
                trainers = {
                    f"masked_trainer_{m}": _MaskedTrainerBench(
                        model, params, x, y, setup, precision, Path(tmp) / f"ledger-{m}", m
                    )
                    for m in args.clipping
                }
                if args.compare_tail:  # the same trainers without the tail batch
                    for m in args.clipping:
                        trainers[f"masked_trainer_{m}_no_tail"] = _MaskedTrainerBench(
                            model, params, x, y, setup, precision,
                            Path(tmp) / f"ledger-{m}-no-tail", m, tail=0,
                        )  # fmt: skip
                if args.compare_xla_options:  # the same trainers compiled with XLA's defaults
                    for m in args.clipping:
                        trainers[f"masked_trainer_{m}_xla_defaults"] = _MaskedTrainerBench(
                            model, params, x, y, setup, precision,
                            Path(tmp) / f"ledger-{m}-xla-defaults", m, compiler_options={},
                        )  # fmt: skip
                best = {mode: 0.0 for mode in runners}
                for _ in range(args.rounds):
                    for mode, run_one in runners.items():
                        iters, elapsed = _timed(run_one, args.seconds)
                        best[mode] = max(best[mode], iters * p / elapsed)
                    for bench in trainers.values():
                        bench.time_round(args.seconds, args.min_trainer_steps)
                results = {
                    mode: {"examples_per_second": best[mode], **info[mode]} for mode in runners
                }
                results.update({name: bench.finish() for name, bench in trainers.items()})
            for mode, result in results.items():
                emit({**base, "mode": mode, **result})
            ref = results["nonprivate"]["examples_per_second"]
            ratios: dict[str, Any] = {**base, "mode": "ratios", "rounds": args.rounds}
            mem_key = f"xla_peak_bytes_p{args.memory_batch}"
            for m in args.clipping:
                ratios[f"dpsgd_{m}/nonprivate"] = results[f"dpsgd_{m}"]["examples_per_second"] / ref
                ratios[f"masked_trainer_{m}/nonprivate"] = (
                    results[f"masked_trainer_{m}"]["examples_per_second"] / ref
                )
                mem, mem0 = results[f"dpsgd_{m}"][mem_key], results["nonprivate"][mem_key]
                ratios[f"memory_{m}/nonprivate_p{args.memory_batch}"] = (
                    mem / mem0 if mem and mem0 else None
                )
                ratios[f"ledger_share_{m}"] = results[f"masked_trainer_{m}"]["ledger_share"]
                if args.compare_tail:
                    without = results[f"masked_trainer_{m}_no_tail"]["examples_per_second"]
                    ratios[f"masked_trainer_{m}_no_tail/nonprivate"] = without / ref
                    ratios[f"tail_gain_{m}"] = (
                        results[f"masked_trainer_{m}"]["examples_per_second"] / without
                    )
                if args.compare_xla_options and f"dpsgd_{m}_xla_defaults" in results:
                    bare = results[f"dpsgd_{m}_xla_defaults"]["examples_per_second"]
                    ratios[f"dpsgd_{m}_xla_defaults/nonprivate"] = bare / ref
                if args.compare_xla_options:
                    plain = results[f"masked_trainer_{m}_xla_defaults"]["examples_per_second"]
                    ratios[f"masked_trainer_{m}_xla_defaults/nonprivate"] = plain / ref
                    ratios[f"xla_options_gain_{m}"] = (
                        results[f"masked_trainer_{m}"]["examples_per_second"] / plain
                    )
            emit(ratios)
    finally:
        if out is not None:
            out.close()
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--models",
        default="cnn,vit",
        help="comma-separated subset of cnn,vit,text,mlp (default cnn,vit)",
    )
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per mode")
    parser.add_argument("--physical-batch-size", type=int, default=None)
    parser.add_argument("--expected-batch-size", type=int, default=None)
    parser.add_argument(
        "--min-trainer-steps",
        type=int,
        default=2 * GROUP_COMMIT,
        help="fewest timed steps of the masked trainer (default 128: two ledger group commits)",
    )
    parser.add_argument("--precision", choices=("float32", "tf32", "bf16"), default=None)
    parser.add_argument(
        "--any-backend",
        action="store_true",
        help="run the --device gpu configurations whatever JAX's backend (for checking)",
    )
    parser.add_argument(
        "--clipping",
        default="vmap,ghost",
        help="comma-separated clipping methods to compare: vmap, ghost (default both)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="timing rounds (best kept)")
    parser.add_argument(
        "--memory-batch", type=int, default=256, help="also report XLA peak memory at this p"
    )
    parser.add_argument(
        "--compare-tail",
        action="store_true",
        help="also time each masked trainer without its tail batch (tail_batch_size=0)",
    )
    parser.add_argument(
        "--compare-xla-options",
        action="store_true",
        help="also time each masked trainer compiled with XLA's default options "
        "(compiler_options={}; trainers.xla_options)",
    )
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument(
        "--num-processes",
        default=None,
        metavar="P,...",
        help="multi-process scaling of the whole trainer (dpverify launch), e.g. 1,2,4",
    )
    parser.add_argument("--task", default="digits-cnn", help="--num-processes: task to train")
    parser.add_argument("--steps", type=int, default=40, help="--num-processes: logical steps")
    return parser


def run_processes(args: argparse.Namespace, counts: list[int]) -> list[dict[str, Any]]:
    """Train ``args.task`` with P processes for each P in ``counts`` (see module docstring)."""
    import subprocess
    import tempfile

    p = args.physical_batch_size or 64
    e = args.expected_batch_size or 256
    records: list[dict[str, Any]] = []
    base = None
    out = open(args.out, "a") if args.out else None
    try:
        for n in counts:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "dpverify", "launch", "-n", str(n)]
                if args.device == "gpu":
                    cmd += ["--gpus-per-process", "1"]
                cmd += [
                    "--", "train", "--task", args.task, "--out", f"{tmp}/run",
                    "--steps", str(args.steps), "--checkpoint-every", str(args.steps),
                    "--expected-batch-size", str(e), "--physical-batch-size", str(p),
                    "--noise-multiplier", "1.0", "--seed", "0", "--quiet", "--json",
                ]  # fmt: skip
                if args.precision:
                    cmd += ["--precision", args.precision]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(done.returncode)
                summary = json.loads(done.stdout)
            eps = summary["examples_per_second"]
            base = eps if base is None else base
            record = {
                "bench": "processes", "device": args.device, "task": args.task,
                "processes": n, "devices": summary["devices"], "steps": args.steps,
                "physical_batch_size": p, "expected_batch_size": e,
                "examples_per_second": eps, "scaling": eps / base if base else None,
                "first_step_seconds": summary["first_step_seconds"],
                "compilations_per_process": summary["compilations_per_process"],
                "wall_seconds": summary["wall_seconds"],
            }  # fmt: skip
            if args.device == "cpu":
                record["note"] = "CPU: the processes share the same cores (overhead only)"
            _emit(record, out)
            records.append(record)
    finally:
        if out is not None:
            out.close()
    return records


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_processes:
        try:
            counts = [int(c) for c in args.num_processes.split(",") if c.strip()]
        except ValueError:
            counts = []
        if not counts or min(counts) < 1:
            print(f"--num-processes={args.num_processes!r} must list counts >= 1", file=sys.stderr)
            return 2
        run_processes(args, counts)
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in ("cnn", "vit", "text", "mlp")]
    if bad or not models:
        print(f"--models={args.models!r} must name some of cnn, vit, text, mlp", file=sys.stderr)
        return 2
    args.models = models
    clipping = [m.strip() for m in args.clipping.split(",") if m.strip()]
    if not clipping or any(m not in _STEPS for m in clipping):
        print(f"--clipping={args.clipping!r} must name vmap and/or ghost", file=sys.stderr)
        return 2
    args.clipping = clipping
    if args.seconds is None:
        args.seconds = 10.0 if args.device == "gpu" else 5.0
    for name in (
        "physical_batch_size",
        "expected_batch_size",
        "min_trainer_steps",
        "rounds",
        "memory_batch",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"--{name.replace('_', '-')}={value} must be >= 1", file=sys.stderr)
            return 2
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
