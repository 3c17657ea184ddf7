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
  last physical batch is a cost here.  The time is split into sampling, the
  DP-SGD step and ledger writing; ``ledger_share`` is the ledger's part of the
  total (target < 2%).

Each mode is compiled and warmed up first, then timed for at least
``--seconds`` of wall-clock time (whole steps, device synchronised).

Output: one JSON line per (model, mode) with ``examples_per_second``, then one
per model with the ratios ``dpsgd_vmap/nonprivate``,
``masked_trainer/nonprivate`` and ``ledger_share``.

Usage::

    python benchmarks/throughput.py                 # CPU: tiny CNN and ViT, 16×16×3
    python benchmarks/throughput.py --device gpu    # ViT-Small-like (width 384, depth 6,
                                                    # patch 4, 32×32×3, p=128, TF32) and the
                                                    # CIFAR-10 CNN (p=256, TF32); < 5 min on one GPU
    python benchmarks/throughput.py --models vit --seconds 5 --out results.jsonl

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
# (device, model) → (model kwargs, image shape, p, E, N); the GPU ViT is the reference's.
_TABLE: dict[tuple[str, str], tuple[dict[str, Any], tuple[int, int, int], int, int, int]] = {
    ("gpu", "cnn"): ({"channels": (32, 64, 128), "groups": 8}, (32, 32, 3), 256, 1024, 50_000),
    ("gpu", "vit"): (_VIT_SMALL, (32, 32, 3), 128, 512, 50_000),
    ("cpu", "cnn"): ({"channels": (16, 32), "groups": 4}, (16, 16, 3), 32, 128, 4096),
    ("cpu", "vit"): (_TINY_VIT, (16, 16, 3), 32, 128, 4096),
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
    from trainers.models import CNN, ViT

    cls = CNN if setup.name == "cnn" else ViT
    return cls(num_classes=10, **setup.kwargs)


def _emit(record: dict[str, Any], out: Any) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def _timed(run_one, seconds: float, min_iters: int = 3) -> tuple[int, float]:
    """Run ``run_one()`` (which must synchronise) until ``seconds`` elapsed; (iterations, time)."""
    iters, start = 0, time.perf_counter()
    while True:
        run_one()
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and iters >= min_iters:
            return iters, elapsed


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


def _bench_jitted(make_step, model, params, x_dev, y_dev, p, seconds, precision):
    """Compile, warm up and time the step ``make_step`` builds, on random batches of p."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from trainers.precision import precision_context

    opt = optax.adam(LEARNING_RATE)
    fn = jax.jit(make_step(model, opt, x_dev, y_dev, p), donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    n, key = x_dev.shape[0], jax.random.PRNGKey(0)
    state = {"params": jax.tree_util.tree_map(jnp.copy, params), "t": 0}
    state["opt"] = opt.init(state["params"])

    def run_one():
        idx = rng.integers(0, n, size=p).astype(np.int32)
        state["t"] += 1
        k = jax.random.fold_in(key, state["t"])
        state["params"], state["opt"] = fn(state["params"], state["opt"], idx, k)
        jax.block_until_ready(state["params"])

    with precision_context(precision):
        t0 = time.perf_counter()
        run_one()  # compile + first step
        compile_s = time.perf_counter() - t0
        run_one()
        iters, elapsed = _timed(run_one, seconds)
    return {"examples_per_second": iters * p / elapsed, "steps": iters, "compile_s": compile_s}


def _bench_masked_trainer(
    model,
    params,
    x_np,
    y_np,
    setup: Setup,
    seconds: float,
    precision: str,
    ledger_dir: Path,
    min_steps: int,
):
    import jax
    import jax.numpy as jnp
    import optax

    from dpverify.ledger import LedgerWriter, RunHeader, Seal, Step
    from dpverify.samplers import PoissonSampler
    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD

    n, p, e = setup.dataset_size, setup.physical_batch_size, setup.expected_batch_size
    q = e / n
    opt = optax.adam(LEARNING_RATE)
    config = DPSGDConfig(
        clip_norm=CLIP_NORM,
        noise_multiplier=NOISE_MULTIPLIER,
        denominator=q * n,
        physical_batch_size=p,
        precision=precision,
    )
    trainer = MaskedDPSGD(lambda p_, x: model.apply({"params": p_}, x), opt, config)
    sampler = PoissonSampler(n, q, seed=1)
    header = RunHeader(
        dataset_size=n,
        sampler="poisson",
        sampling_rate=q,
        noise_multiplier=NOISE_MULTIPLIER,
        clip_norm=CLIP_NORM,
        delta=1e-5,
        expected_batch_size=q * n,
        physical_batch_size=p,
        precision=precision,
        task=f"benchmark-{setup.name}",
    )
    key = jax.random.PRNGKey(0)
    x_dev, y_dev = jnp.asarray(x_np), jnp.asarray(y_np)
    state = {"params": jax.tree_util.tree_map(jnp.copy, params), "t": 0}
    state["opt"] = opt.init(state["params"])
    timing = {"sample": 0.0, "step": 0.0, "ledger": 0.0, "examples": 0, "padded": 0}

    with LedgerWriter.create(ledger_dir, header, group_commit=GROUP_COMMIT) as writer:

        def run_one(record: bool = True) -> None:
            t = state["t"]
            t0 = time.perf_counter()
            idx = sampler.sample(t)
            t1 = time.perf_counter()
            state["params"], state["opt"], stats = trainer.step(
                state["params"], state["opt"], x_dev, y_dev, idx, key, t
            )
            t2 = time.perf_counter()
            writer.append(Step(step=t, indices=idx, **stats.ledger_fields()))
            t3 = time.perf_counter()
            state["t"] = t + 1
            if record:
                timing["sample"] += t1 - t0
                timing["step"] += t2 - t1
                timing["ledger"] += t3 - t2
                timing["examples"] += idx.size
                timing["padded"] += stats.physical_batches * p

        t0 = time.perf_counter()
        run_one(record=False)  # compile
        compile_s = time.perf_counter() - t0
        for _ in range(2):
            run_one(record=False)
        iters, elapsed = _timed(run_one, seconds, min_iters=min_steps)
        t0 = time.perf_counter()
        writer.close(seal=Seal(steps_executed=state["t"], final_step=state["t"]))
        close_s = time.perf_counter() - t0
    timing["ledger"] += close_s
    elapsed += close_s
    return {
        "examples_per_second": timing["examples"] / elapsed,
        "physical_examples_per_second": timing["padded"] / elapsed,
        "steps": iters,
        "compile_s": compile_s,
        "compilations": trainer.compilations,
        "sampling_rate": q,
        "expected_batch_size": e,
        "seconds_sampling": timing["sample"],
        "seconds_step": timing["step"],
        "seconds_ledger": timing["ledger"],
        "seconds_ledger_close": close_s,
        "ledger_share": timing["ledger"] / elapsed,
        "ledger_bytes": sum(f.stat().st_size for f in ledger_dir.iterdir() if f.is_file()),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the benchmark described by ``args``; returns the emitted records."""
    import jax
    import numpy as np

    records: list[dict[str, Any]] = []
    out = open(args.out, "a") if args.out else None
    backend = jax.default_backend()
    if args.device == "gpu" and backend != "gpu" and not args.any_backend:
        raise SystemExit(f"--device gpu but JAX's backend is {backend!r} (--any-backend to force)")
    precision = args.precision or ("tf32" if args.device == "gpu" else "float32")
    device_name = str(jax.devices()[0].device_kind)

    def emit(record):
        records.append(record)
        _emit(record, out)

    try:
        for setup in _setups(args.device, args.models, args):
            model = _model(setup)
            rng = np.random.default_rng(0)
            x = rng.uniform(size=(setup.dataset_size, *setup.image_shape)).astype(np.float32)
            y = rng.integers(0, 10, size=setup.dataset_size).astype(np.int32)
            params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"]
            n_params = int(sum(a.size for a in jax.tree_util.tree_leaves(params)))
            base = {
                "model": setup.name,
                "params": n_params,
                "image_shape": list(setup.image_shape),
                "physical_batch_size": setup.physical_batch_size,
                "precision": precision,
                "device": device_name,
            }
            x_dev, y_dev = jax.device_put(x), jax.device_put(y)
            p = setup.physical_batch_size
            results = {}
            results["nonprivate"] = _bench_jitted(
                _nonprivate_step, model, params, x_dev, y_dev, p, args.seconds, precision
            )
            emit({**base, "mode": "nonprivate", **results["nonprivate"]})
            results["dpsgd_vmap"] = _bench_jitted(
                _dpsgd_vmap_step, model, params, x_dev, y_dev, p, args.seconds, precision
            )
            emit({**base, "mode": "dpsgd_vmap", **results["dpsgd_vmap"]})
            with tempfile.TemporaryDirectory() as tmp:
                results["masked_trainer"] = _bench_masked_trainer(
                    model,
                    params,
                    x,
                    y,
                    setup,
                    args.seconds,
                    precision,
                    Path(tmp) / "ledger",
                    args.min_trainer_steps,
                )
            emit({**base, "mode": "masked_trainer", **results["masked_trainer"]})
            ref = results["nonprivate"]["examples_per_second"]
            emit(
                {
                    **base,
                    "mode": "ratios",
                    "dpsgd_vmap/nonprivate": results["dpsgd_vmap"]["examples_per_second"] / ref,
                    "masked_trainer/nonprivate": results["masked_trainer"]["examples_per_second"]
                    / ref,
                    "masked_trainer/dpsgd_vmap": results["masked_trainer"]["examples_per_second"]
                    / results["dpsgd_vmap"]["examples_per_second"],
                    "ledger_share": results["masked_trainer"]["ledger_share"],
                    "ledger_share_below_2pct": results["masked_trainer"]["ledger_share"] < 0.02,
                }
            )
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
        "--models", default="cnn,vit", help="comma-separated subset of cnn,vit (default both)"
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
    bad = [m for m in models if m not in ("cnn", "vit")]
    if bad or not models:
        print(f"--models={args.models!r} must name cnn and/or vit", file=sys.stderr)
        return 2
    args.models = models
    if args.seconds is None:
        args.seconds = 10.0 if args.device == "gpu" else 5.0
    for name in ("physical_batch_size", "expected_batch_size", "min_trainer_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"--{name.replace('_', '-')}={value} must be >= 1", file=sys.stderr)
            return 2
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
