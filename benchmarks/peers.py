"""Side by side: Opacus 1.6 against our masked DP-SGD trainer, same models, same CPU threads.

The peer people would pick instead of this project's JAX trainer is Opacus
(PyTorch).  This benchmark trains the SAME two models in both frameworks —
the CPU CNN and tiny ViT of ``benchmarks/throughput.py``, each written a
second time in PyTorch layer for layer (:class:`TorchCNN`, :class:`TorchViT`;
parameter counts are printed for both and must match, and the Flax weights
copied into the PyTorch model must give the same logits) — with the same
DP-SGD settings: Poisson sampling at q = E/N (expected logical batch E),
clip norm C = 1, noise multiplier σ = 1, Adam (lr 1e-3), synthetic data.

Modes, each timed in the same process, interleaved in rounds (best round kept):

* ``opacus_<g>_logical`` — ``PrivacyEngine.make_private(grad_sample_mode=g)``
  with g ∈ {``hooks``, ``ghost``, ``functorch``}, the whole Poisson logical
  batch as one physical batch (Opacus's own Poisson DataLoader);
* ``opacus_<g>_physical`` — the same under ``BatchMemoryManager`` with
  ``max_physical_batch_size = p`` (the physical batch of our trainer);
* ``ours_<c>`` — :class:`trainers.dpsgd.MaskedDPSGD` with ``clipping=c``
  (``vmap``, ``ghost``) at physical batch p, sampled by
  :class:`dpverify.samplers.PoissonSampler`, every step appended to a real
  ledger (:class:`dpverify.ledger.LedgerWriter`) — the whole trainer;
* ``ours_<c>_p<P>`` — the same at a larger physical batch P (``--jax-physical``);
* ``ours_vmap_dev<n>`` — data parallel over n simulated CPU devices
  (``--xla_force_host_platform_device_count=n``, ``MaskedDPSGD(devices=n)``);
  run in a process of its own, because that flag changes the whole process.
* ``ours_<c>[_p<P>]_streams<n>`` — in that same process, the single-device
  trainer with ``MaskedDPSGD(streams=n)``: each logical step's physical
  batches dealt round-robin to the n devices, which accumulate concurrently,
  merged on the first for one noise draw and update (both clipping methods).
* ``ours_vmap_proc<t>`` — data parallel over t *processes* (``--multi-process``,
  off by default: on this 2-core machine it ran at a tenth of one process's
  speed, see docs/masked-dpsgd.md): t single-threaded JAX processes, process i pinned to
  core i, joined by ``jax.distributed`` on 127.0.0.1 with gloo collectives
  (:mod:`trainers.distributed`), ``MaskedDPSGD(devices=<the t global
  devices>)``: each physical batch split over the processes, one all-reduce
  per logical step, the ledger written by process 0.  Collectives need every
  process to run the same number of steps, so each round is a fixed
  ``--proc-steps`` logical steps (not ``--seconds``); process 0's time is
  reported.

* ``nonprivate_jax_b<B>`` (B = p and B = E) and ``nonprivate_torch_b<E>``
  (``--nonprivate``, default on) — no DP at all: one plain step (gather,
  mean loss, ``grad``/``backward``, Adam) on a fixed-size batch of B examples.
  Not contenders: they are the ceiling each framework's DP modes work under on
  the same cores.  ``nonprivate_jax_best / opacus_best`` in the ``ratios``
  line (best of the batch sizes timed) bounds what a DP trainer written in JAX
  can reach against Opacus on this machine at those batch sizes, because
  DP-SGD does at least the non-private work per example.

Threads: every setting runs in a subprocess pinned to the first t CPU cores
(``os.sched_setaffinity``), with ``torch.set_num_threads(t)`` and, for JAX,
XLA flags set before JAX starts (``--xla_cpu_multi_thread_eigen=false`` at
t = 1: XLA's thread pools size themselves from the affinity mask).  At
t ≥ 2 the JAX side also runs with the XLA flags of ``--jax-xla-flags``
(default none).

Examples per second count real (sampled) examples; the time covers sampling,
the step (and, for ours, the ledger write).  Output: one JSON line per
(threads, model, mode), then per (threads, model) a ``ratios`` line with
``ours_best/opacus_best`` (our best mode over Opacus's best mode) and each of
our modes over Opacus's best; ``max_rss_bytes`` of the worker process (all its
modes together: a per-mode peak is not cheap to get on CPU).

Usage::

    python benchmarks/peers.py                       # 1 and 2 threads, CNN and ViT
    python benchmarks/peers.py --threads 2 --seconds 5 --rounds 3 --out peers.jsonl
    python benchmarks/peers.py --quick               # seconds: a schema check (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLIP_NORM = 1.0
NOISE_MULTIPLIER = 1.0
LEARNING_RATE = 1e-3
OPACUS_MODES = ("hooks", "ghost", "functorch")

# The CPU settings of benchmarks/throughput.py: (model kwargs, image shape, p, E, N).
SETUPS: dict[str, tuple[dict[str, Any], tuple[int, int, int], int, int, int]] = {
    "cnn": ({"channels": (16, 32), "groups": 4}, (16, 16, 3), 32, 128, 4096),
    "vit": (
        {"patch_size": 4, "width": 64, "depth": 2, "num_heads": 4, "mlp_dim": 128},
        (16, 16, 3),
        32,
        128,
        4096,
    ),
}
QUICK = {
    "cnn": ({"channels": (4, 8), "groups": 2}, (8, 8, 3), 4, 8, 64),
    "vit": (
        {"patch_size": 4, "width": 8, "depth": 1, "num_heads": 2, "mlp_dim": 16},
        (8, 8, 3),
        4,
        8,
        64,
    ),
}


# -- PyTorch copies of the Flax models ---------------------------------------------------


def torch_model(name: str, kwargs: dict[str, Any], image_shape: tuple[int, int, int]):
    """The PyTorch copy of ``trainers.models.CNN`` / ``ViT`` (10 classes)."""
    import torch
    from torch import nn

    class TorchCNN(nn.Module):
        """Conv 3×3 (SAME) → GroupNorm → tanh → 2×2 avg pool per stage, mean, Linear."""

        def __init__(self, channels, groups, in_channels):
            super().__init__()
            layers: list[nn.Module] = []
            c = in_channels
            for width in channels:
                layers += [
                    nn.Conv2d(c, width, 3, padding=1),
                    nn.GroupNorm(min(groups, width), width, eps=1e-6),  # Flax's epsilon
                    nn.Tanh(),
                    nn.AvgPool2d(2, ceil_mode=True),
                ]
                c = width
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(c, 10)

        def forward(self, x):  # x: NCHW
            return self.head(self.features(x).mean(dim=(2, 3)))

    class PosEmbedding(nn.Module):
        def __init__(self, tokens, width):
            super().__init__()
            self.pos_embedding = nn.Parameter(torch.randn(1, tokens, width) * 0.02)

        def forward(self, x):
            return x + self.pos_embedding

    class Attention(nn.Module):
        """Flax's MultiHeadDotProductAttention: q/k/v/out Linear maps, softmax(q·kᵀ/√d)·v.

        Four ``nn.Linear`` (what ``opacus.layers.DPMultiheadAttention`` is built of;
        not that class itself: in Opacus 1.6 its ``batch_first=True`` output
        reshape mixes heads and tokens, and ``batch_first=False`` puts the
        sequence first, which Opacus's per-sample hooks read as the batch).
        """

        def __init__(self, width, heads):
            super().__init__()
            self.heads = heads
            self.query = nn.Linear(width, width)
            self.key = nn.Linear(width, width)
            self.value = nn.Linear(width, width)
            self.out = nn.Linear(width, width)

        def forward(self, x):  # (B, T, D)
            b, t, d = x.shape

            def split(z):
                return z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            w = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
            return self.out((w @ v).transpose(1, 2).reshape(b, t, d))

    class Block(nn.Module):
        """Pre-LN block: x + MHA(LN(x)), x + MLP(LN(x)) with tanh-GELU (Flax's default)."""

        def __init__(self, width, heads, mlp_dim):
            super().__init__()
            self.ln1 = nn.LayerNorm(width, eps=1e-6)
            self.attn = Attention(width, heads)
            self.ln2 = nn.LayerNorm(width, eps=1e-6)
            self.fc1 = nn.Linear(width, mlp_dim)
            self.act = nn.GELU(approximate="tanh")
            self.fc2 = nn.Linear(mlp_dim, width)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))

    class TorchViT(nn.Module):
        """Patch Conv → position embedding → blocks → LayerNorm → mean → Linear."""

        def __init__(self, patch_size, width, depth, num_heads, mlp_dim, image_shape):
            super().__init__()
            h, w, c = image_shape
            self.embed = nn.Conv2d(c, width, patch_size, stride=patch_size)
            self.pos = PosEmbedding((h // patch_size) * (w // patch_size), width)
            self.blocks = nn.Sequential(
                *(Block(width, num_heads, mlp_dim) for _ in range(depth))
            )
            self.ln = nn.LayerNorm(width, eps=1e-6)
            self.head = nn.Linear(width, 10)

        def forward(self, x):  # x: NCHW
            x = self.embed(x).flatten(2).transpose(1, 2)  # (B, T, D), row-major patches
            x = self.blocks(self.pos(x))
            return self.head(self.ln(x).mean(dim=1))

    if name == "cnn":
        return TorchCNN(kwargs["channels"], kwargs["groups"], image_shape[-1])
    return TorchViT(**kwargs, image_shape=image_shape)


def load_flax_params(model: Any, name: str, params: Any) -> None:
    """Copy Flax parameters into the PyTorch copy (proves the copy is layer for layer)."""
    import numpy as np
    import torch

    def t(a):
        return torch.tensor(np.asarray(a, dtype=np.float32))

    def dense(lin, p):
        lin.weight.data, lin.bias.data = t(p["kernel"]).T.contiguous(), t(p["bias"])

    def conv(c, p):  # HWIO → OIHW
        c.weight.data, c.bias.data = t(p["kernel"]).permute(3, 2, 0, 1).contiguous(), t(p["bias"])

    def norm(n, p):
        n.weight.data, n.bias.data = t(p["scale"]), t(p["bias"])

    if name == "cnn":
        stages = [m for m in model.features if isinstance(m, torch.nn.Conv2d | torch.nn.GroupNorm)]
        for i in range(len(stages) // 2):
            conv(stages[2 * i], params[f"Conv_{i}"])
            norm(stages[2 * i + 1], params[f"GroupNorm_{i}"])
        dense(model.head, params["Dense_0"])
        return
    conv(model.embed, params["embed"])
    model.pos.pos_embedding.data = t(params["pos_embedding"])
    for i, block in enumerate(model.blocks):
        p = params[f"block{i}"]
        norm(block.ln1, p["LayerNorm_0"])
        norm(block.ln2, p["LayerNorm_1"])
        attn = p["MultiHeadDotProductAttention_0"]
        width = attn["query"]["kernel"].shape[0]
        for key in ("query", "key", "value"):  # kernel (D, H, d) → (D, H·d), bias (H, d)
            dense(getattr(block.attn, key), {"kernel": np.reshape(attn[key]["kernel"], (width, -1)),
                                             "bias": np.ravel(attn[key]["bias"])})  # fmt: skip
        dense(block.attn.out, {"kernel": np.reshape(attn["out"]["kernel"], (-1, width)),
                               "bias": attn["out"]["bias"]})  # fmt: skip
        dense(block.fc1, p["Dense_0"])
        dense(block.fc2, p["Dense_1"])
    norm(model.ln, params["LayerNorm_0"])
    dense(model.head, params["head"])


# -- the worker: one thread setting, one process -----------------------------------------


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _timed(runner: Any, seconds: float, min_iters: int) -> tuple[int, float]:
    """Call ``runner.run_one()`` (returns examples done) until ``seconds``; (examples, time).

    A runner that queues work ahead (ours records one step behind) is drained
    inside the timed window, so no work of a round runs into the next mode's."""
    examples, iters, start = 0, 0, time.perf_counter()
    while True:
        examples += runner.run_one()
        iters += 1
        if time.perf_counter() - start >= seconds and iters >= min_iters:
            if hasattr(runner, "drain"):
                runner.drain()
            return examples, time.perf_counter() - start


class _Opacus:
    """One Opacus configuration: ``run_one()`` trains one logical batch."""

    def __init__(self, name, kwargs, shape, x, y, mode, physical, expected, jax_params):
        import numpy as np
        import torch
        from opacus import PrivacyEngine
        from opacus.utils.batch_memory_manager import BatchMemoryManager
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(0)
        model = torch_model(name, kwargs, shape)
        load_flax_params(model, name, jax_params)
        xt = torch.tensor(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
        loader = DataLoader(TensorDataset(xt, torch.tensor(y, dtype=torch.long)),
                            batch_size=expected)  # fmt: skip
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        engine = PrivacyEngine(accountant="rdp")
        common = {
            "module": model,
            "optimizer": optimizer,
            "data_loader": loader,
            "noise_multiplier": NOISE_MULTIPLIER,
            "max_grad_norm": CLIP_NORM,
            "poisson_sampling": True,
            "grad_sample_mode": mode,
        }
        criterion = torch.nn.CrossEntropyLoss()
        if mode == "ghost":
            model, optimizer, criterion, loader = engine.make_private(
                **common, criterion=criterion
            )
        else:
            model, optimizer, loader = engine.make_private(**common)
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.physical = physical
        if physical is not None:
            self._bmm = BatchMemoryManager(
                data_loader=loader, max_physical_batch_size=physical, optimizer=optimizer
            )
            loader = self._bmm.__enter__()
        self.loader = loader
        self._it = iter(loader)
        self.real_physical = 0
        self.run_one()  # warm up

    def _next(self):
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def run_one(self) -> int:
        """Train until one logical step is taken; returns its real examples."""
        done = 0
        while True:
            xb, yb = self._next()
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(xb), yb)
            loss.backward()
            self.optimizer.step()
            done += len(yb)
            if self.physical is None or not self.optimizer._is_last_step_skipped:
                return done


class _Ours:
    """Our masked trainer (sampler + MaskedDPSGD + ledger): ``run_one()`` is one logical step."""

    def __init__(
        self, name, kwargs, shape, x, y, clipping, physical, expected, devices, tmp,
        write_ledger=True, streams=None,
    ):  # fmt: skip
        import jax
        import jax.numpy as jnp
        import optax

        from dpverify.ledger import LedgerWriter, RunHeader
        from dpverify.samplers import PoissonSampler
        from trainers.dpsgd import DPSGDConfig, MaskedDPSGD
        from trainers.loop import RecordOneBehind
        from trainers.models import CNN, ViT

        model = (CNN if name == "cnn" else ViT)(num_classes=10, **kwargs)
        n = x.shape[0]
        q = expected / n
        config = DPSGDConfig(
            clip_norm=CLIP_NORM,
            noise_multiplier=NOISE_MULTIPLIER,
            denominator=q * n,
            physical_batch_size=physical,
            clipping=clipping,
        )
        opt = optax.adam(LEARNING_RATE)
        self.trainer = MaskedDPSGD(
            lambda p_, xb: model.apply({"params": p_}, xb),
            opt,
            config,
            devices=devices if not isinstance(devices, int) or devices > 1 else None,
            streams=streams,
        )
        self.params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
        self.opt_state = opt.init(self.params)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.sampler = PoissonSampler(n, q, seed=1)
        self.key = jax.random.PRNGKey(0)
        header = RunHeader(
            dataset_size=n,
            sampler="poisson",
            sampling_rate=q,
            noise_multiplier=NOISE_MULTIPLIER,
            clip_norm=CLIP_NORM,
            delta=1e-5,
            expected_batch_size=q * n,
            physical_batch_size=physical,
            task=f"peers-{name}",
            extra={"clipping": clipping},
        )
        self.writer = LedgerWriter.create(Path(tmp), header) if write_ledger else None
        # As in trainers.loop: step t is recorded after step t + 1 is queued.
        self.behind = RecordOneBehind(self._record)
        self.t = 0
        # Compile every shape on every device now: a tail size or stream device first
        # used in a timed round would charge it seconds of compilation.
        self.trainer.precompile(self.params, self.opt_state, self.x, self.y)
        self.run_one()
        self.run_one()

    def _record(self, t, idx, stats) -> None:
        from dpverify.ledger import Step

        if self.writer is not None:
            self.writer.append(Step(step=t, indices=idx, **stats.ledger_fields()))

    def run_one(self) -> int:
        idx = self.sampler.sample(self.t)
        self.params, self.opt_state, pending = self.trainer.step_async(
            self.params, self.opt_state, self.x, self.y, idx, self.key, self.t
        )
        self.behind.push(self.t, idx, pending)
        self.t += 1
        return int(idx.size)

    def drain(self) -> None:
        """Wait for the step in flight and record it."""
        self.behind.settle()

    def close(self) -> None:
        from dpverify.ledger import Seal

        self.behind.settle()
        if self.writer is not None:
            self.writer.close(seal=Seal(steps_executed=self.t, final_step=self.t))


class _NonPrivateJax:
    """Non-private JAX at a fixed batch of ``batch`` examples: the ceiling of any JAX DP trainer.

    One jitted step: gather ``batch`` rows (uniform without replacement, a fresh
    draw each step) from the data held on the device, mean cross-entropy,
    ``grad``, Adam.  No clipping, no noise, no mask, no padding, no ledger, one
    shape: what the same model costs in JAX on the same cores with nothing
    private about it.  A DP trainer in JAX does at least this work per example
    at the same batch size, so ``nonprivate_jax_best / opacus_best`` bounds
    ``ours_best / opacus_best`` from above at the batch sizes timed."""

    def __init__(self, model, params, x, y, batch):
        import jax
        import jax.numpy as jnp
        import numpy as np
        import optax

        opt = optax.adam(LEARNING_RATE)
        x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)

        def step(p_, s_, idx):
            xb, yb = jnp.take(x_dev, idx, axis=0), jnp.take(y_dev, idx, axis=0)

            def loss(q_):
                logits = model.apply({"params": q_}, xb)
                return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

            updates, s_ = opt.update(jax.grad(loss)(p_), s_, p_)
            return optax.apply_updates(p_, updates), s_

        self._step = jax.jit(step)
        self.params, self.opt_state = params, opt.init(params)
        self.batch, self.n = batch, x.shape[0]
        self._rng = np.random.default_rng(2)
        self.run_one()  # compile
        self.run_one()

    def run_one(self) -> int:
        import jax

        idx = self._rng.choice(self.n, size=self.batch, replace=False).astype("int32")
        self.params, self.opt_state = self._step(self.params, self.opt_state, idx)
        jax.block_until_ready(self.params)
        return self.batch


class _NonPrivateTorch:
    """Non-private PyTorch at a fixed batch of ``batch`` examples (same draw as
    :class:`_NonPrivateJax`): what Opacus's modes cost beyond plain PyTorch."""

    def __init__(self, name, kwargs, shape, x, y, batch, jax_params):
        import numpy as np
        import torch

        torch.manual_seed(0)
        self.model = torch_model(name, kwargs, shape)
        load_flax_params(self.model, name, jax_params)
        self.x = torch.tensor(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
        self.y = torch.tensor(y, dtype=torch.long)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.batch, self.n = batch, x.shape[0]
        self._rng = np.random.default_rng(2)
        self.run_one()

    def run_one(self) -> int:
        import torch

        idx = torch.from_numpy(self._rng.choice(self.n, size=self.batch, replace=False))
        self.optimizer.zero_grad()
        self.criterion(self.model(self.x[idx]), self.y[idx]).backward()
        self.optimizer.step()
        return self.batch


def _param_counts(name, kwargs, shape, x):
    import jax

    from trainers.models import CNN, ViT

    model = (CNN if name == "cnn" else ViT)(num_classes=10, **kwargs)
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
    ours = int(sum(a.size for a in jax.tree_util.tree_leaves(params)))
    return params, model, ours


def _check_copy(name, kwargs, shape, x, params, model) -> tuple[int, float]:
    """(PyTorch parameter count, max |logit difference|) with the Flax weights copied."""
    import numpy as np
    import torch

    tm = torch_model(name, kwargs, shape)
    load_flax_params(tm, name, params)
    count = sum(p.numel() for p in tm.parameters())
    xs = x[:8]
    with torch.no_grad():
        theirs = tm(torch.tensor(np.transpose(xs, (0, 3, 1, 2)).copy())).numpy()
    ours = np.asarray(model.apply({"params": params}, xs))
    return int(count), float(np.max(np.abs(theirs - ours)))


def _base_info(threads: int, **more: Any) -> dict[str, Any]:
    """Fields of every record of a worker: threads, its cores, its XLA flags."""
    return {
        "threads": threads,
        **more,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _setup(table: dict, name: str, base_info: dict[str, Any]):
    """Synthetic data of model ``name``, its Flax parameters and module, and the fields
    every record of that model shares: ``(x, y, params, model, base)``."""
    import numpy as np

    kwargs, shape, p, e, n = table[name]
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    params, model, ours_count = _param_counts(name, kwargs, shape, x)
    base = {**base_info, "model": name, "physical_batch_size": p, "expected_batch_size": e,
            "dataset_size": n, "params_ours": ours_count}  # fmt: skip
    return x, y, params, model, base


def worker(args: argparse.Namespace) -> int:
    """Run every mode of one thread setting (this process is already pinned)."""
    import warnings


    warnings.filterwarnings("ignore")
    threads = args.threads_here
    table = QUICK if args.quick else SETUPS
    run_torch = args.role == "all"
    if run_torch:
        import torch

        torch.set_num_threads(threads)
    base_info = _base_info(threads)
    for name in args.models:
        kwargs, shape, p, e, _ = table[name]
        x, y, params, model, base = _setup(table, name, base_info)
        ours_count = base["params_ours"]
        runners: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            if run_torch:
                torch_count, diff = _check_copy(name, kwargs, shape, x, params, model)
                if torch_count != ours_count or not diff < 1e-3:
                    raise SystemExit(
                        f"{name}: PyTorch copy has {torch_count} parameters (ours {ours_count}),"
                        f" logits differ by {diff:.3g}"
                    )
                base.update(params_torch=torch_count, max_logit_difference=diff)
                for mode in args.opacus_modes:
                    for kind, phys in (("logical", None), ("physical", p)):
                        runners[f"opacus_{mode}_{kind}"] = _Opacus(
                            name, kwargs, shape, x, y, mode, phys, e, params
                        )
            devices = args.devices_here
            if args.nonprivate and devices == 1:
                for size in sorted({p, e}):
                    runners[f"nonprivate_jax_b{size}"] = _NonPrivateJax(model, params, x, y, size)
                if run_torch:
                    runners[f"nonprivate_torch_b{e}"] = _NonPrivateTorch(
                        name, kwargs, shape, x, y, e, params
                    )
            for clipping in args.clipping if devices == 1 else ["vmap"]:
                for phys in [p, *(args.jax_physical if devices == 1 else [])]:
                    suffix = "" if phys == p else f"_p{phys}"
                    suffix += "" if devices == 1 else f"_dev{devices}"
                    key = f"ours_{clipping}{suffix}"
                    runners[key] = _Ours(name, kwargs, shape, x, y, clipping, phys, e, devices,
                                         f"{tmp}/{key}")  # fmt: skip
            if devices > 1:  # the same devices as S concurrent streams of physical batches
                for clipping in args.clipping:
                    for phys in [p, *args.jax_physical]:
                        suffix = "" if phys == p else f"_p{phys}"
                        key = f"ours_{clipping}{suffix}_streams{devices}"
                        runners[key] = _Ours(name, kwargs, shape, x, y, clipping, phys, e, 1,
                                             f"{tmp}/{key}", streams=devices)  # fmt: skip
            best: dict[str, dict[str, Any]] = {}
            for _ in range(args.rounds):
                for mode, runner in runners.items():
                    examples, elapsed = _timed(runner, args.seconds, args.min_steps)
                    rate = examples / elapsed
                    if mode not in best or rate > best[mode]["examples_per_second"]:
                        best[mode] = {"examples_per_second": rate, "examples": examples}
            for mode, runner in runners.items():
                if isinstance(runner, _Ours):
                    runner.close()
                    best[mode]["clipping"] = runner.trainer.clipping
                    best[mode]["compilations"] = runner.trainer.compilations
                    best[mode]["devices"] = runner.trainer.device_count
                _emit({**base, "mode": mode, **best[mode], "load_average": list(os.getloadavg())})
    _emit({**base_info, "mode": "worker_done",
           "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})  # fmt: skip
    return 0


def process_worker(args: argparse.Namespace) -> int:
    """One of t data-parallel JAX processes (this process is pinned to one core)."""
    import warnings

    from trainers.distributed import ProcessGroup, initialize

    warnings.filterwarnings("ignore")
    group = ProcessGroup(
        num_processes=args.threads_here,
        process_id=int(os.environ["DPVERIFY_PEERS_PROCESS_ID"]),
        coordinator=os.environ["DPVERIFY_PEERS_COORDINATOR"],
        initialization_timeout=120,
    )
    initialize(group)  # before any JAX computation
    import jax

    t = group.num_processes
    table = QUICK if args.quick else SETUPS
    base_info = _base_info(t, processes=t)
    for name in args.models:
        kwargs, shape, p, e, _ = table[name]
        x, y, _, _, base = _setup(table, name, base_info)
        with tempfile.TemporaryDirectory() as tmp:
            runners = {
                f"ours_{c}_proc{t}": _Ours(name, kwargs, shape, x, y, c, p, e, jax.devices(),
                                           f"{tmp}/{c}", write_ledger=group.is_leader)
                for c in args.clipping
            }  # fmt: skip
            best: dict[str, dict[str, Any]] = {}
            for _ in range(args.rounds):
                for mode, runner in runners.items():
                    start, examples = time.perf_counter(), 0
                    for _ in range(args.proc_steps):  # the same count on every process
                        examples += runner.run_one()
                    runner.drain()
                    rate = examples / (time.perf_counter() - start)
                    if mode not in best or rate > best[mode]["examples_per_second"]:
                        best[mode] = {"examples_per_second": rate, "examples": examples}
            for mode, runner in runners.items():
                runner.close()
                best[mode]["clipping"] = runner.trainer.clipping
                best[mode]["compilations"] = runner.trainer.compilations
                best[mode]["devices"] = runner.trainer.device_count
                if group.is_leader:
                    _emit({**base, "mode": mode, **best[mode],
                           "load_average": list(os.getloadavg())})  # fmt: skip
    return 0


# -- the driver ----------------------------------------------------------------------------


def _xla_flags(threads: int, devices: int, extra: str) -> str:
    flags = [os.environ.get("XLA_FLAGS", "")]
    if threads == 1:
        flags.append("--xla_cpu_multi_thread_eigen=false")
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    if threads > 1 and extra:
        flags.append(extra)
    return " ".join(f for f in flags if f)


def _run_worker(args, threads: int, devices: int, role: str) -> list[dict[str, Any]]:
    cores = sorted(os.sched_getaffinity(0))
    if threads > len(cores):
        raise SystemExit(f"--threads {threads}: only {len(cores)} cores available")
    env = dict(os.environ)
    env["XLA_FLAGS"] = _xla_flags(threads, devices, args.jax_xla_flags)
    env["OMP_NUM_THREADS"] = str(threads)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, __file__, "--_worker", role, "--_threads", str(threads),
           "--_devices", str(devices), "--models", ",".join(args.models),
           "--seconds", str(args.seconds), "--rounds", str(args.rounds),
           "--min-steps", str(args.min_steps), "--clipping", ",".join(args.clipping),
           "--opacus-modes", ",".join(args.opacus_modes),
           "--jax-physical", ",".join(map(str, args.jax_physical)),
           "--nonprivate" if args.nonprivate else "--no-nonprivate"]  # fmt: skip
    if args.quick:
        cmd.append("--quick")
    done = subprocess.run(
        cmd,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cores[:threads]),
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"worker threads={threads} devices={devices} failed ({done.returncode})")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_processes(args, threads: int) -> list[dict[str, Any]]:
    """t single-threaded JAX processes, process i pinned to core i; process 0's records."""
    cores = sorted(os.sched_getaffinity(0))
    if threads > len(cores):
        raise SystemExit(f"--threads {threads}: only {len(cores)} cores available")
    coordinator = f"127.0.0.1:{_free_loopback_port()}"
    root = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, __file__, "--_worker", "processes", "--_threads", str(threads),
           "--_devices", "1", "--models", ",".join(args.models),
           "--rounds", str(args.rounds), "--proc-steps", str(args.proc_steps),
           "--clipping", "vmap"]  # fmt: skip  (ghost clipping runs on one device only)
    if args.quick:
        cmd.append("--quick")
    procs = []
    for i in range(threads):
        env = dict(os.environ)
        env["XLA_FLAGS"] = _xla_flags(1, 1, "")
        env["OMP_NUM_THREADS"] = "1"
        env["JAX_PLATFORMS"] = "cpu"
        env["DPVERIFY_PEERS_PROCESS_ID"] = str(i)
        env["DPVERIFY_PEERS_COORDINATOR"] = coordinator
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        core = cores[i]
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=lambda core=core: os.sched_setaffinity(0, [core]),
            )
        )
    outputs = [proc.communicate(timeout=1800) for proc in procs]
    for i, (proc, (_, err)) in enumerate(zip(procs, outputs, strict=True)):
        if proc.returncode != 0:
            sys.stderr.write(err[-4000:])
            raise SystemExit(f"process {i} of {threads} failed ({proc.returncode})")
    return [json.loads(line) for line in outputs[0][0].splitlines() if line.startswith("{")]


def driver(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = open(args.out, "a") if args.out else None
    emitted: list[dict[str, Any]] = []

    def emit(record):
        emitted.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        if out is not None:
            out.write(line + "\n")
            out.flush()

    try:
        for threads in args.threads:
            records = _run_worker(args, threads, 1, "all")
            for r in records:  # emitted as soon as each worker ends (long runs keep them)
                emit(r)
            if threads > 1 and args.data_parallel:
                more = _run_worker(args, threads, threads, "jax")
                for r in more:
                    emit(r)
                records += more
            if threads > 1 and args.multi_process:
                more = _run_processes(args, threads)
                for r in more:
                    emit(r)
                records += more
            for name in args.models:
                rows = {r["mode"]: r for r in records if r.get("model") == name}
                opacus = {m: r["examples_per_second"] for m, r in rows.items()
                          if m.startswith("opacus_")}  # fmt: skip
                ours = {m: r["examples_per_second"] for m, r in rows.items()
                        if m.startswith("ours_")}  # fmt: skip
                plain = {m: r["examples_per_second"] for m, r in rows.items()
                         if m.startswith("nonprivate_jax_")}  # fmt: skip
                best_o = max(opacus, key=opacus.__getitem__)
                best_u = max(ours, key=ours.__getitem__)
                first = rows[best_o]
                ratios = {
                    "mode": "ratios",
                    "threads": threads,
                    "model": name,
                    "params_ours": first["params_ours"],
                    "params_torch": first["params_torch"],
                    "opacus_best_mode": best_o,
                    "opacus_best_examples_per_second": opacus[best_o],
                    "ours_best_mode": best_u,
                    "ours_best_examples_per_second": ours[best_u],
                    "ours_best/opacus_best": ours[best_u] / opacus[best_o],
                    **{f"{m}/opacus_best": v / opacus[best_o] for m, v in ours.items()},
                    "load_average": list(os.getloadavg()),
                }
                if plain:  # the ceiling: non-private JAX on the same cores, over Opacus's best
                    best_n = max(plain, key=plain.__getitem__)
                    ratios.update({
                        "nonprivate_jax_best_mode": best_n,
                        "nonprivate_jax_best/opacus_best": plain[best_n] / opacus[best_o],
                        "ours_best/nonprivate_jax_best": ours[best_u] / plain[best_n],
                    })  # fmt: skip
                emit(ratios)
    finally:
        if out is not None:
            out.close()
    return emitted


def _csv(value: str, kind=str) -> list:
    return [kind(v.strip()) for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="1,2", help="thread/core counts (default 1,2)")
    parser.add_argument("--models", default="cnn,vit", help="subset of cnn,vit")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per mode")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds (best kept)")
    parser.add_argument("--min-steps", type=int, default=3, help="fewest logical steps timed")
    parser.add_argument("--clipping", default="vmap,ghost", help="our clipping methods")
    parser.add_argument("--opacus-modes", default=",".join(OPACUS_MODES))
    parser.add_argument("--jax-physical", default="", help="also run ours at these p, e.g. 64")
    parser.add_argument(
        "--data-parallel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="at t ≥ 2 threads also run ours over t simulated CPU devices (default on)",
    )
    parser.add_argument(
        "--multi-process",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="at t ≥ 2 threads also run ours data-parallel over t single-threaded "
        "processes, one per core (default off)",
    )
    parser.add_argument(
        "--proc-steps",
        type=int,
        default=40,
        help="logical steps per timing round of --multi-process (default 40)",
    )
    parser.add_argument(
        "--nonprivate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time non-private JAX (at p and E) and PyTorch (at E) on fixed-size "
        "batches: the ceiling any DP trainer in each framework works under (default on)",
    )
    parser.add_argument("--jax-xla-flags", default="", help="extra XLA flags for JAX at t ≥ 2")
    parser.add_argument("--quick", action="store_true", help="tiny models, 0.05 s per mode")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--_worker", dest="role", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_threads", dest="threads_here", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_devices", dest="devices_here", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.threads = _csv(args.threads, int)
        args.jax_physical = _csv(args.jax_physical, int)
    except ValueError:
        print(f"--threads={args.threads!r} / --jax-physical must list integers", file=sys.stderr)
        return 2
    args.models = _csv(args.models)
    args.clipping = _csv(args.clipping)
    args.opacus_modes = _csv(args.opacus_modes)
    problems = []
    if not args.threads or min(args.threads) < 1:
        problems.append(f"--threads={args.threads} must list counts >= 1")
    if not args.models or any(m not in SETUPS for m in args.models):
        problems.append(f"--models={args.models} must name some of cnn, vit")
    if not args.clipping or any(c not in ("vmap", "ghost") for c in args.clipping):
        problems.append(f"--clipping={args.clipping} must name vmap and/or ghost")
    if not args.opacus_modes or any(m not in OPACUS_MODES for m in args.opacus_modes):
        problems.append(f"--opacus-modes={args.opacus_modes} must name some of hooks, ghost, functorch")
    if args.seconds <= 0 or args.rounds < 1 or args.min_steps < 1 or args.proc_steps < 1:
        problems.append("--seconds must be > 0, --rounds, --min-steps and --proc-steps >= 1")
    if problems:
        print(problems[0], file=sys.stderr)
        return 2
    if args.quick:
        args.seconds, args.rounds, args.min_steps = min(args.seconds, 0.05), 1, 1
        args.proc_steps = min(args.proc_steps, 3)
    if args.role == "processes":
        return process_worker(args)
    if args.role is not None:
        return worker(args)
    driver(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
