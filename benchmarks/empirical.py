"""One-run canary auditing: honest false-refutation rate, mutated trainers, tightness.

Two modes, one JSON object per line on stdout (and in ``--out`` when given):

``trainer`` — the real masked DP-SGD step (:class:`trainers.dpsgd.MaskedDPSGD`)
on the digits MLP with M canaries (:mod:`trainers.canaries`), the real
Poisson sampler over N₀ + M slots, plain SGD; for each of ``--seeds`` seeds a
fresh model, canary key and noise key.  Variants: ``honest``; ``sigma_not_sigma_c``
(noise σ instead of σ·C, the ``noise_std_sigma`` mutation, at C = 10); ``no_noise``
(a trainer that adds no noise while the claim is for σ).  Per variant: the
claimed ε (PLD), the lower bounds' median and max, and how many seeds the
empirical check alone refutes (lower bound > claim).  The honest rate must be
≤ 1 − confidence.  (No ledger is written: the loop is the training loop's
step sequence without I/O, so one compilation serves every seed.)

``simulate`` — the tightness table: for each (σ, q, T, M), the scores an
ideal white-box auditor sees under plain SGD with no interference from real
data, score_i = S_i·K_i + σ·√T·Z_i (K_i ~ Binomial(T, q) the times canary i
is sampled, Z_i ~ N(0, 1)), the median lower bound over ``--reps`` draws,
against the accounted ε (PLD).

Usage::

    python benchmarks/empirical.py trainer --seeds 100 --steps 100
    python benchmarks/empirical.py simulate --reps 20
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import numpy as np

DEFAULT_GRID = (
    # (sigma, q, T, M)
    (1.0, 0.01, 1000, 1000),
    (2.0, 0.5, 10, 1000),
    (1.0, 1.0, 1, 1000),
    (1.0, 0.1, 100, 1000),
    (1.0, 0.5, 10, 1000),
    (0.5, 1.0, 1, 250),
    (0.5, 1.0, 1, 1000),
    (0.5, 1.0, 1, 4000),
    (0.2, 0.03, 100, 1000),
)


def _claimed(q: float, sigma: float, steps: int, delta: float) -> float:
    from dpverify.accounting import epsilon_poisson

    return float(epsilon_poisson(q, sigma, steps, delta, "pld"))


def simulate(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The tightness table (idealised white-box scores)."""
    from dpverify.empirical import audit_scores

    rng = np.random.default_rng(args.seed)
    rows = []
    for sigma, q, steps, m in DEFAULT_GRID:
        bounds = []
        for _ in range(args.reps):
            bits = rng.random(m) < 0.5
            k = rng.binomial(steps, q, size=m)
            scores = bits * k + sigma * math.sqrt(steps) * rng.normal(size=m)
            bounds.append(audit_scores(scores, bits, delta=args.delta).epsilon_lower_bound)
        eps = _claimed(q, sigma, steps, args.delta)
        rows.append(
            {
                "mode": "simulate",
                "sigma": sigma,
                "q": q,
                "steps": steps,
                "canaries": m,
                "delta": args.delta,
                "accounted_epsilon": eps,
                "lower_bound_median": float(np.median(bounds)),
                "lower_bound_max": float(np.max(bounds)),
                "ratio": float(np.median(bounds)) / eps,
                "reps": args.reps,
            }
        )
    return rows


def _variant_config(name: str, sigma: float, clip: float):
    from trainers.dpsgd import DPSGDConfig

    return {
        "honest": dict(noise_multiplier=sigma, mutation=None),
        "sigma_not_sigma_c": dict(noise_multiplier=sigma, mutation="noise_std_sigma"),
        "no_noise": dict(noise_multiplier=0.0, mutation=None),
    }[name], DPSGDConfig


def trainer(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Real masked DP-SGD with canaries, many seeds per variant."""
    import jax

    from dpverify.empirical import audit_scores
    from dpverify.empirical.canaries import design_canaries, flatten_params, param_leaves
    from dpverify.samplers import PoissonSampler
    from trainers.canaries import TrainingCanaries
    from trainers.components import init_model, make_optimizer
    from trainers.dpsgd import MaskedDPSGD
    from trainers.tasks import get_task

    data = get_task("digits-mlp").load_data(None)
    n0, m = data.size, args.canaries
    n = n0 + m
    q = args.expected_batch_size / n
    claimed = _claimed(q, args.sigma, args.steps, args.delta)
    x, y = jax.numpy.asarray(data.x_train), jax.numpy.asarray(data.y_train)
    rows = []
    for variant in args.variants:
        kw, cfg_cls = _variant_config(variant, args.sigma, args.clip_norm)
        _, apply, _ = init_model("digits-mlp", data.num_classes, data.x_train[:1], 0)
        opt = make_optimizer("sgd", args.learning_rate)
        cfg = cfg_cls(
            clip_norm=args.clip_norm,
            denominator=q * n,
            physical_batch_size=args.physical_batch_size,
            **kw,
        )
        step_fn = MaskedDPSGD(apply, opt, cfg)
        bounds, refuted, accs = [], 0, []
        t0, c0 = time.perf_counter(), time.process_time()
        for seed in range(args.seeds):
            rng = np.random.default_rng([seed, 0x14])
            _, _, params = init_model("digits-mlp", data.num_classes, data.x_train[:1], seed)
            host = jax.device_get(params)
            theta0 = flatten_params(host)
            design = design_canaries(
                rng.bytes(32), count=m, num_params=theta0.size, clip_norm=args.clip_norm
            )
            template = tuple((p, np.shape(a)) for p, a in param_leaves(host))
            canaries = TrainingCanaries(design=design, real_size=n0, template=template)
            sampler = PoissonSampler(n, q, seed=seed)
            noise_key = jax.random.PRNGKey(seed)
            opt_state = opt.init(params)
            for t in range(args.steps):
                idx = sampler.sample(t)
                real, slots = canaries.split(idx)
                params, opt_state, _ = step_fn.step(
                    params, opt_state, x, y, real, noise_key, t,
                    extra_sum=canaries.clipped_sum(slots),
                )  # fmt: skip
            scores = design.scores(theta0, flatten_params(jax.device_get(params)))
            res = audit_scores(
                scores, design.included, delta=args.delta, confidence=args.confidence
            )
            bounds.append(res.epsilon_lower_bound)
            refuted += res.epsilon_lower_bound > claimed
            logits = apply(params, data.x_test)
            accs.append(float(np.mean(np.argmax(np.asarray(logits), -1) == data.y_test)))
        rows.append(
            {
                "mode": "trainer",
                "variant": variant,
                "seeds": args.seeds,
                "steps": args.steps,
                "canaries": m,
                "dataset_size": n,
                "q": q,
                "sigma": args.sigma,
                "clip_norm": args.clip_norm,
                "delta": args.delta,
                "confidence": args.confidence,
                "claimed_epsilon": claimed,
                "lower_bound_median": float(np.median(bounds)),
                "lower_bound_max": float(np.max(bounds)),
                "refuted": int(refuted),
                "refuted_rate": refuted / args.seeds,
                "accuracy_median": float(np.median(accs)),
                "compilations": step_fn.compilations,
                "wall_s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("simulate")
    s.add_argument("--reps", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--delta", type=float, default=1e-5)
    t = sub.add_parser("trainer")
    t.add_argument("--seeds", type=int, default=100)
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--canaries", type=int, default=1000)
    t.add_argument("--expected-batch-size", type=float, default=64.0)
    t.add_argument("--physical-batch-size", type=int, default=64)
    t.add_argument("--sigma", type=float, default=2.0)
    t.add_argument("--clip-norm", type=float, default=10.0)
    t.add_argument("--learning-rate", type=float, default=0.05)
    t.add_argument("--delta", type=float, default=1e-5)
    t.add_argument("--confidence", type=float, default=0.95)
    t.add_argument(
        "--variants",
        nargs="+",
        default=["honest", "sigma_not_sigma_c", "no_noise"],
        choices=["honest", "sigma_not_sigma_c", "no_noise"],
    )
    for p in (s, t):
        p.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    rows = simulate(args) if args.mode == "simulate" else trainer(args)
    lines = [json.dumps(r) for r in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
