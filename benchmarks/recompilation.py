"""Compilations of a paper-style DP-SGD step versus :class:`trainers.dpsgd.MaskedDPSGD`.

Poisson sampling makes the logical batch size L random, so the number of
physical batches k = ⌈L/p⌉ varies from step to step.  The reference code of
Beltran et al. 2024, "Efficient and Scalable Implementation of Differentially
Private Deep Learning without Shortcuts" (arXiv:2406.17298), jits the whole
accumulation over the k physical batches of a logical batch; k is then part of
a shape, and every new k is a new compilation.  This benchmark runs both on the
same Poisson batches and measures the difference.

Two implementations of the *same* masked DP-SGD step (per-example gradients
by ``vmap(value_and_grad)``, global L2 norm, ĝ_i = g_i·C/max(‖g_i‖, C), masked
sum with ``where``, noise σC·z drawn once per logical step by
:func:`trainers.dpsgd.gaussian_noise`, division by D = q·N, Optax update, all
float32 at matmul precision "highest"):

* ``paper_style`` — :class:`PaperStyleDPSGD` below: the logical batch is
  padded on the host to k·p indices, reshaped to ``(k, p)``, and ONE jitted
  function gathers the examples, ``lax.scan``s over the k physical batches
  (static length k) accumulating the clipped masked sum, adds the noise and
  applies the update.  One dispatch per logical step, one compilation per
  distinct k.
* ``masked`` — :class:`trainers.dpsgd.MaskedDPSGD`: one dispatch per step of
  one compiled function looping (dynamic trip count k) over a fixed ``(K, p)``
  index buffer, then noise and update (for a convolutional model on XLA:CPU,
  by default a host loop of k ``(p, …)`` calls plus two: see its
  ``fused_batches``); one compilation per run.  (It also computes the update sketch and
  the clip statistics the ledger records; the paper-style step does not.)

Both get the same initial parameters, the same index sets
(:class:`dpverify.samplers.PoissonSampler`), the same noise key and the same
training arrays already on the device; afterwards their parameters are
compared (``params_max_abs_diff``; ``params_match`` = every leaf within
``rtol=1e-4, atol=1e-5``, float32 summation-order tolerance).

Measured per implementation: ``compilations`` (Python trace counters
incremented inside the traced functions; for ``masked`` the maximum over its
functions, as ``MaskedDPSGD.compilations``), ``total_seconds`` (all steps,
compilation included, each step synchronised), ``compile_seconds`` (JAX's own
monitoring events: tracing + lowering + XLA backend compile, summed),
``compile_overhead_seconds`` (first-call minus steady-state: for each step
that traced, its time minus the median time of non-tracing steps with the same
k, or scaled by k when none), and ``steady_examples_per_second`` (real
examples over the time of the steps that did not trace).  One ``comparison``
line per model gives the ratios paper_style/masked.

Usage::

    python benchmarks/recompilation.py                  # digits MLP and CNN, 200 steps
    python benchmarks/recompilation.py --steps 50 --models mlp --out r.jsonl

``masked`` runs first, after a global warm-up, so any remaining first-run
cost of the process falls on it, not on the paper-style step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

#: JAX monitoring events whose durations make up a compilation.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_clock = {"seconds": 0.0}
_listener_registered = False


def _register_compile_listener() -> None:
    global _listener_registered
    if _listener_registered:
        return
    import jax

    def listen(event: str, duration: float, **_kwargs: Any) -> None:
        if event in _COMPILE_EVENTS:
            _compile_clock["seconds"] += float(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    _listener_registered = True


class PaperStyleDPSGD:
    """Masked DP-SGD with the logical step jitted over the padded ``(k·p, …)`` batch.

    The math equals :class:`trainers.dpsgd.MaskedDPSGD` with no mutation and
    nothing frozen: for the padded indices ``idx`` (k, p) and mask ``m`` (k, p),

        S = Σ_j Σ_i where(m_ji, g_ji · C / max(‖g_ji‖, C), 0)      (scan over j)
        ḡ = (S + σC·z_t) / D,   z_t = gaussian_noise(noise_key, t, params)

    followed by ``optimizer.update``.  Because k is the leading dimension of
    ``idx``, each distinct k is a separate trace and XLA compilation
    (``traces`` counts them).

    Args:
        model_apply: ``model_apply(params, x) -> logits``.
        optimizer: an ``optax.GradientTransformation``.
        clip_norm: C.
        noise_multiplier: σ.
        denominator: D.
        physical_batch_size: p.
    """

    def __init__(
        self,
        model_apply: Any,
        optimizer: Any,
        *,
        clip_norm: float,
        noise_multiplier: float,
        denominator: float,
        physical_batch_size: int,
    ) -> None:
        import jax

        self.model_apply = model_apply
        self.optimizer = optimizer
        self.clip_norm = float(clip_norm)
        self.noise_std = float(noise_multiplier) * float(clip_norm)
        self.denominator = float(denominator)
        self.physical_batch_size = int(physical_batch_size)
        self.traces = 0
        self._step = jax.jit(self._logical_step)

    def cache_size(self) -> int:
        """Entries in the jit cache (one per distinct k seen)."""
        return int(self._step._cache_size())

    def _logical_step(self, params, opt_state, x_all, y_all, idx, mask, noise_key, step):
        import jax
        import jax.numpy as jnp
        import optax

        from trainers.dpsgd import gaussian_noise
        from trainers.losses import softmax_cross_entropy

        self.traces += 1
        p = self.physical_batch_size
        clip = jnp.float32(self.clip_norm)

        def example_loss(prm, x, y):
            logits = self.model_apply(prm, x[None])
            return softmax_cross_entropy(logits.astype(jnp.float32), y[None])[0]

        per_example = jax.vmap(jax.value_and_grad(example_loss), in_axes=(None, 0, 0))

        def physical_batch(acc, batch):
            bidx, bmask = batch
            xb = jnp.take(x_all, bidx, axis=0)
            yb = jnp.take(y_all, bidx, axis=0)
            _, grads = per_example(params, xb, yb)
            leaves = jax.tree_util.tree_leaves(grads)
            sq = jnp.zeros((p,), jnp.float32)
            for g in leaves:
                sq = sq + jnp.sum(jnp.square(g.reshape(p, -1)), axis=1)
            factor = clip / jnp.maximum(jnp.sqrt(sq), clip)

            def masked_sum(g):
                shape = (p,) + (1,) * (g.ndim - 1)
                return jnp.sum(
                    jnp.where(bmask.reshape(shape), g * factor.reshape(shape), 0.0), axis=0
                )

            return jax.tree_util.tree_map(lambda a, g: a + masked_sum(g), acc, grads), None

        zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(jnp.shape(a), jnp.float32), params)
        total, _ = jax.lax.scan(physical_batch, zeros, (idx, mask))
        noise = gaussian_noise(noise_key, step, total)
        std, denom = jnp.float32(self.noise_std), jnp.float32(self.denominator)
        grads = jax.tree_util.tree_map(lambda s, z: (s + std * z) / denom, total, noise)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def step(self, params, opt_state, x_all, y_all, indices, noise_key, step):
        """One logical step on ``indices`` (any length); returns ``(params, opt_state)``."""
        from trainers.precision import precision_context

        p = self.physical_batch_size
        indices = np.asarray(indices, dtype=np.int32)
        k = -(-len(indices) // p)
        pad = int(indices[0]) if len(indices) else 0
        idx = np.full(k * p, pad, dtype=np.int32)
        idx[: len(indices)] = indices
        mask = np.zeros(k * p, dtype=bool)
        mask[: len(indices)] = True
        with precision_context("float32"):
            return self._step(
                params,
                opt_state,
                x_all,
                y_all,
                idx.reshape(k, p),
                mask.reshape(k, p),
                noise_key,
                np.uint32(step),
            )


def _model(name: str):
    from trainers.tasks import get_task

    return get_task({"mlp": "digits-mlp", "cnn": "digits-cnn"}[name]).make_model(10)


def _steady_estimate(times: list[float], ks: list[int], traced: list[bool], j: int) -> float:
    same = [t for t, k, tr in zip(times, ks, traced, strict=True) if not tr and k == ks[j]]
    if same:
        return statistics.median(same)
    rest = [(t, k) for t, k, tr in zip(times, ks, traced, strict=True) if not tr and k > 0]
    if not rest:
        return 0.0
    return statistics.median(t / k for t, k in rest) * ks[j]


def _run_impl(step_fn, trace_count, batches, p: int) -> dict[str, Any]:
    """Run ``step_fn(t, indices)`` over ``batches``; time every step."""
    times, ks, traced = [], [], []
    compile_start = _compile_clock["seconds"]
    for t, indices in enumerate(batches):
        before = trace_count()
        start = time.perf_counter()
        step_fn(t, indices)
        times.append(time.perf_counter() - start)
        ks.append(-(-len(indices) // p))
        traced.append(trace_count() > before)
    steady = [j for j in range(len(times)) if not traced[j]]
    overhead = sum(
        max(times[j] - _steady_estimate(times, ks, traced, j), 0.0)
        for j in range(len(times))
        if traced[j]
    )
    steady_seconds = sum(times[j] for j in steady)
    steady_examples = sum(len(batches[j]) for j in steady)
    return {
        "compilations": trace_count(),
        "total_seconds": round(sum(times), 4),
        "compile_seconds": round(_compile_clock["seconds"] - compile_start, 4),
        "compile_overhead_seconds": round(overhead, 4),
        "steady_steps": len(steady),
        "steady_examples_per_second": (
            round(steady_examples / steady_seconds, 1) if steady_seconds > 0 else None
        ),
    }


def bench_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Both implementations on one model; returns the three JSON records."""
    import jax
    import jax.numpy as jnp
    import optax

    from dpverify.samplers import PoissonSampler
    from trainers.data import load_digits
    from trainers.dpsgd import DPSGDConfig, MaskedDPSGD

    data = load_digits()
    n, p, e = data.size, args.physical_batch_size, args.expected_batch_size
    q = e / n
    sampler = PoissonSampler(n, q, seed=args.seed)
    batches = [sampler.sample(t) for t in range(args.steps)]
    ks = sorted({-(-len(b) // p) for b in batches})
    model = _model(name)

    def apply(prm, x):
        return model.apply({"params": prm}, x)

    x_dev, y_dev = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    params0 = model.init(jax.random.PRNGKey(args.seed), x_dev[:1])["params"]
    noise_key = jax.random.PRNGKey(args.seed + 1)
    optimizer = optax.adam(args.learning_rate)
    common = {
        "model": name,
        "steps": args.steps,
        "expected_batch_size": e,
        "physical_batch_size": p,
        "distinct_k": len(ks),
        "k_range": [ks[0], ks[-1]],
        "backend": jax.default_backend(),
    }
    copy = jax.tree_util.tree_map(jnp.array, params0)  # MaskedDPSGD donates its inputs

    # (b) ours, first (after the global warm-up in run()).
    cfg = DPSGDConfig(
        clip_norm=args.clip_norm,
        noise_multiplier=args.noise_multiplier,
        denominator=q * n,
        physical_batch_size=p,
    )
    masked = MaskedDPSGD(apply, optimizer, cfg)
    state = {"params": copy, "opt": optimizer.init(copy)}

    def masked_step(t: int, indices: np.ndarray) -> None:
        prm, opt, _ = masked.step(
            state["params"], state["opt"], x_dev, y_dev, indices, noise_key, t
        )
        state["params"], state["opt"] = jax.block_until_ready((prm, opt))

    ours = _run_impl(masked_step, lambda: masked.compilations, batches, p)
    ours.update(common, implementation="masked", jit_cache_entries=masked.cache_sizes())

    # (a) paper-style: one jitted function of the padded (k, p) logical batch.
    paper = PaperStyleDPSGD(
        apply,
        optimizer,
        clip_norm=args.clip_norm,
        noise_multiplier=args.noise_multiplier,
        denominator=q * n,
        physical_batch_size=p,
    )
    pstate = {"params": params0, "opt": optimizer.init(params0)}

    def paper_step(t: int, indices: np.ndarray) -> None:
        prm, opt = paper.step(pstate["params"], pstate["opt"], x_dev, y_dev, indices, noise_key, t)
        pstate["params"], pstate["opt"] = jax.block_until_ready((prm, opt))

    theirs = _run_impl(paper_step, lambda: paper.traces, batches, p)
    theirs.update(common, implementation="paper_style", jit_cache_entries=paper.cache_size())

    a = jax.tree_util.tree_leaves(jax.device_get(pstate["params"]))
    b = jax.tree_util.tree_leaves(jax.device_get(state["params"]))
    diff = max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b, strict=True)
    )
    match = all(np.allclose(u, v, rtol=1e-4, atol=1e-5) for u, v in zip(a, b, strict=True))

    def ratio(key: str) -> float | None:
        num, den = theirs[key], ours[key]
        return round(num / den, 3) if num is not None and den else None

    comparison = {
        **common,
        "implementation": "comparison",
        "compilations": {"paper_style": theirs["compilations"], "masked": ours["compilations"]},
        "total_seconds_ratio": ratio("total_seconds"),
        "compile_seconds_ratio": ratio("compile_seconds"),
        "steady_throughput_ratio": ratio("steady_examples_per_second"),
        "params_max_abs_diff": diff,
        "params_match": bool(match),
    }
    return [theirs, ours, comparison]


def _warm_up() -> None:
    """Pay the process's one-time JAX costs before anything is timed."""
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jax.jit(lambda a: jnp.sin(a) @ a.T)(jnp.ones((4, 4))))


def run(args: argparse.Namespace, out: Any = None) -> list[dict[str, Any]]:
    """Benchmark every model in ``args.models``; prints (and writes) JSON lines."""
    _register_compile_listener()
    _warm_up()
    records = []
    for name in args.models:
        for record in bench_model(name, args):
            line = json.dumps(record)
            print(line, flush=True)
            if out is not None:
                out.write(line + "\n")
                out.flush()
            records.append(record)
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=("mlp", "cnn"), default=["mlp", "cnn"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--expected-batch-size", type=int, default=256)
    parser.add_argument("--physical-batch-size", type=int, default=32)
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.physical_batch_size < 1 or args.expected_batch_size < 1:
        print(
            "--steps, --physical-batch-size and --expected-batch-size must be >= 1", file=sys.stderr
        )
        return 2
    if args.out is None:
        run(args)
    else:
        with open(args.out, "a", encoding="utf-8") as out:
            run(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
