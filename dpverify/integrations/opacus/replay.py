"""Replay of recorded Opacus runs with an independent float64 PyTorch reference.

The auditor's oracle for runs written by :func:`dpverify.integrations.opacus.record`.
It shares no code with the recorder (or with Opacus's optimiser): from the
files of the run directory alone it re-runs every logical step of a
checkpoint segment ``[k, k')`` and compares the parameters it reaches with
checkpoint k' — the parameters that were released.  Per step t, with the
ledger's indices B_t, the step's C and σ (header values unless the step
records its own) and the header's denominator D (Opacus divides by
``expected_batch_size`` = int(q·N), a public constant):

1. per-example gradients g_i = ∇_θ ℓ(f_θ(x_i), y_i) for i ∈ B_t, in float64,
   with ``torch.func.vmap(grad(...))`` over the exported model (no hooks);
2. flat clipping over all trainable parameters: ĝ_i = g_i · min(1, C/‖g_i‖₂);
3. ONE Gaussian draw z ~ N(0, σ²C²·I) per step, from a ``torch.Generator``
   seeded by SHA-256(``b"dpverify/opacus-noise/v1"`` ‖ key ‖ t as 8
   little-endian bytes) (first 8 bytes little-endian, top bit cleared),
   drawn parameter by parameter in the optimiser's order in the recorded
   parameter dtype — the rule the recorder pins Opacus's generator to;
4. the update (Σ ĝ_i + z)/D handed to the same ``torch.optim`` class (only
   ``torch.optim`` classes: the optimiser's update rule is library code, not
   the trainer's), restored from checkpoint k and run in float64.

Tolerance: Opacus computes in float32 (and clips with C/(‖g‖+10⁻⁶)); the
deviation ‖θ_ref − θ_k'‖ / ‖θ_k' − θ_k‖ of an honest run measured 2–3·10⁻⁷
per 10-step segment on the digits MLP (docs/integrations.md), so the
tolerance is 10⁻⁴.  A step without noise, with
clipping skipped, with noise per micro-batch, with σ instead of σ·C or with
another denominator moves the parameters by amounts of the order of the
update itself (relative deviation ≫ 10⁻²).

Files read (all loaded without executing code from the run directory:
``torch.load(weights_only=True)`` and ``torch.export.load``): ``noise.key``
(SHA-256 checked against the header), ``opacus/model.pt2`` and
``opacus/data.pt`` (checked against the header's digests), and the
checkpoints (checked against the ledger's digests).  Anything missing or not
matching makes the replay *skipped* with the reason, never a refutation.

References: Abadi et al. 2016, arXiv:1607.00133, Algorithm 1; Yousefpour et
al. 2021, "Opacus: User-Friendly Differential Privacy Library in PyTorch",
arXiv:2109.12298.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["TOLERANCE", "SegmentOutcome", "SegmentReplay", "replay_segments"]

#: Relative deviation ‖θ_ref − θ_rec‖ / ‖θ_rec(end) − θ_rec(start)‖ tolerated.
TOLERANCE = 1e-4

_DOMAIN = b"dpverify/opacus-noise/v1"
_LOSSES = ("cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentOutcome:
    """Replay of the steps between two checkpoints.

    Attributes:
        start: step of the checkpoint restored.
        end: step of the checkpoint compared with.
        max_abs_deviation: largest |θ_ref − θ_rec| over all parameters.
        rel_deviation: ‖θ_ref − θ_rec‖₂ / ‖θ_rec(end) − θ_rec(start)‖₂, or the
            optimiser state's ‖s_ref − s_rec‖₂ / ‖s_rec‖₂ where larger.
        tolerance: the relative tolerance.
        ok: ``rel_deviation <= tolerance`` (and finite).
        reason: one line naming the segment and the deviation.
        diagnosis: the known bug the recorded parameters match, when one does.
    """

    start: int
    end: int
    max_abs_deviation: float
    rel_deviation: float
    tolerance: float
    ok: bool
    reason: str = ""
    diagnosis: str | None = None

    @property
    def steps(self) -> int:
        return self.end - self.start


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentReplay:
    """Outcomes of the replayed segments, or why replay could not run."""

    outcomes: tuple[SegmentOutcome, ...] = ()
    skipped_reason: str | None = None


class _Skip(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class _Variant:
    """The reference (defaults) or one known bug, for the diagnosis of a mismatch."""

    clip: bool = True
    noise: float = 1.0
    scale_by_clip: bool = True
    realised: bool = False


#: Known bugs tried, in order, when a segment does not match (informative only).
_BUGS = (
    ("noise was not added", _Variant(noise=0.0)),
    ("per-example gradients were not clipped", _Variant(clip=False)),
    ("noise std σ instead of σ·C", _Variant(scale_by_clip=False)),
    ("divided by the realised batch size instead of the declared denominator",
     _Variant(realised=True)),
)  # fmt: skip


def checkpoint_steps(ledger: Any) -> list[int]:
    """Steps at which the ledger records a checkpoint, in order, without repeats."""
    return sorted({c.step for c in ledger.checkpoints})


def replay_segments(
    run_dir: str | Path,
    ledger: Any,
    segments: Sequence[tuple[int, int]] | None = None,
    *,
    noise_key_path: str | Path | None = None,
) -> SegmentReplay:
    """Replay checkpoint segments of a recorded Opacus run.

    Args:
        run_dir: the run directory.
        ledger: the read :class:`dpverify.ledger.Ledger` of the run.
        segments: ``(start, end)`` checkpoint steps to replay; ``None`` replays
            every consecutive pair of checkpoints.
        noise_key_path: the noise key, if not ``RUN_DIR/noise.key``.

    Returns:
        a :class:`SegmentReplay`; ``skipped_reason`` says why nothing could be
        replayed (missing file, digest mismatch, no torch, ...).
    """
    try:
        ctx = _Context(Path(run_dir), ledger, noise_key_path)
        marks = checkpoint_steps(ledger)
        if segments is None:
            segments = list(itertools.pairwise(marks))
        outcomes = tuple(ctx.replay(int(a), int(b)) for a, b in segments)
    except _Skip as why:
        return SegmentReplay(skipped_reason=str(why))
    return SegmentReplay(outcomes=outcomes)


class _Context:
    def __init__(self, run_dir: Path, ledger: Any, noise_key_path: Any) -> None:
        try:
            import torch
        except ImportError:
            raise _Skip("PyTorch is not installed (pip install 'dpverify[opacus]')") from None
        self.torch = torch
        self.run_dir, self.ledger, self.header = run_dir, ledger, ledger.header
        ex = dict(self.header.extra)
        if ex.get("framework") != "opacus":
            raise _Skip("not a run recorded from Opacus")
        if ledger.resumes:
            raise _Skip("resumed Opacus runs are not replayed")
        self.extra = ex
        self.key = self._key(noise_key_path)
        self.model = self._model()
        self.x, self.y = self._data()
        if ex.get("optimizer_module", "").split(".")[:2] != ["torch", "optim"] or not hasattr(
            torch.optim, ex.get("optimizer", "")
        ):
            raise _Skip(f"optimizer {ex.get('optimizer')!r} is not a torch.optim class")
        if ex.get("loss") not in _LOSSES:
            raise _Skip(f"loss {ex.get('loss')!r} is not known to the reference")
        self.names = list(ex["param_names"])
        frozen = set(ex.get("frozen", ()))
        self.trainable = [n for n in self.names if n not in frozen]
        self.noise_dtype = getattr(torch, ex.get("param_dtype", "float32"))
        self.steps: dict[int, Any] = {}
        for s in ledger.steps:
            if s.step in self.steps:
                raise _Skip(f"step {s.step} was recorded twice")
            self.steps[s.step] = s
        self.ckpts = {c.step: c for c in ledger.checkpoints}

    # ---------------------------------------------------------------- files

    def _file(self, rel: Any, what: str) -> Path:
        if not rel:
            raise _Skip(f"the run has no {what} ({self.extra.get(what + '_failed', 'not saved')})")
        path = (self.run_dir / rel).resolve()
        if self.run_dir.resolve() not in path.parents:
            raise _Skip(f"{what} path {rel!r} leaves the run directory")
        if not path.is_file():
            raise _Skip(f"{what} {path} is missing")
        return path

    def _key(self, noise_key_path: Any) -> bytes:
        path = Path(noise_key_path) if noise_key_path else self.run_dir / "noise.key"
        if not path.is_file():
            raise _Skip(f"noise key {path} is missing: replay needs the run's secret key")
        key = path.read_bytes()
        if hashlib.sha256(key).hexdigest() != self.header.noise_key_digest:
            raise _Skip(f"noise key {path} does not match the header's noise_key_digest")
        return key

    def _model(self) -> Any:
        path = self._file(self.extra.get("model_file"), "model_export")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.extra.get("model_digest"):
            raise _Skip("the exported model does not match the header's model_digest")
        try:
            program = self.torch.export.load(path)
            return program.module().double()
        except Exception as exc:
            raise _Skip(f"the exported model cannot be loaded ({type(exc).__name__})") from None

    def _data(self) -> tuple[Any, Any]:
        path = self._file(self.extra.get("data_file"), "data_snapshot")
        blob = self.torch.load(path, weights_only=True)
        x, y = blob["x"], blob["y"]
        h = hashlib.sha256()
        for t in (x, y):
            h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
        if h.hexdigest() != self.header.dataset_fingerprint:
            raise _Skip("the saved data does not match the header's dataset_fingerprint")
        if len(x) != self.header.dataset_size:
            raise _Skip(f"the saved data has {len(x)} examples, the header {self.header.dataset_size}")
        x = x.double() if x.is_floating_point() else x
        y = y.double() if y.is_floating_point() else y
        return x, y

    def _checkpoint(self, step: int) -> dict[str, Any]:
        rec = self.ckpts.get(step)
        if rec is None:
            raise _Skip(f"no checkpoint at step {step}")
        path = self._file(rec.path, "checkpoint")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != rec.digest:
            raise _Skip(f"checkpoint {rec.path} does not match its digest in the ledger")
        import io

        return self.torch.load(io.BytesIO(data), weights_only=True)

    # ---------------------------------------------------------------- maths

    def _noise(self, step: int, shapes: list[Any]) -> list[Any]:
        torch = self.torch
        d = hashlib.sha256(_DOMAIN + self.key + step.to_bytes(8, "little")).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(d[:8], "little") & (2**63 - 1))
        return [
            torch.normal(0.0, 1.0, size=tuple(s), generator=gen, dtype=self.noise_dtype).double()
            for s in shapes
        ]

    def _loss(self, out: Any, target: Any) -> Any:
        return getattr(self.torch.nn.functional, self.extra["loss"])(out, target)

    def _clipped_sum(self, fixed: dict, params: dict, idx: Any, clip: float | None) -> dict:
        torch = self.torch
        from torch.func import functional_call, grad, vmap

        if idx.numel() == 0:
            return {n: torch.zeros_like(params[n]) for n in self.trainable}

        def one(p: dict, x: Any, y: Any) -> Any:
            out = functional_call(self.model, {**fixed, **p}, (x.unsqueeze(0),))
            return self._loss(out, y.unsqueeze(0))

        grads = vmap(grad(one), in_dims=(None, 0, 0))(params, self.x[idx], self.y[idx])
        sq = sum(grads[n].reshape(len(idx), -1).pow(2).sum(dim=1) for n in self.trainable)
        norms = sq.sqrt()
        if clip is None:  # diagnosis only: the "clipping skipped" hypothesis
            factor = torch.ones_like(norms)
        else:
            factor = torch.where(norms > clip, clip / norms, torch.ones_like(norms))
        return {n: torch.einsum("i,i...->...", factor, grads[n]) for n in self.trainable}

    def replay(self, start: int, end: int) -> SegmentOutcome:
        """Replay ``[start, end)`` with the reference; on a mismatch, try the known bugs."""
        rel, worst = self._deviation(start, end, _Variant())
        ok = rel <= TOLERANCE
        reason = (
            f"steps {start}–{end - 1} reach the released parameters within {rel:.2g} "
            f"(tolerance {TOLERANCE:g})"
            if ok
            else f"steps {start}–{end - 1} deviate from the released parameters by {rel:.3g} "
            f"of their movement (tolerance {TOLERANCE:g})"
        )
        diagnosis = None
        if not ok:
            for label, variant in _BUGS:
                if self._deviation(start, end, variant)[0] <= TOLERANCE:
                    diagnosis = label
                    break
        return SegmentOutcome(start=start, end=end, max_abs_deviation=worst, rel_deviation=rel,
                              tolerance=TOLERANCE, ok=ok, reason=reason,
                              diagnosis=diagnosis)  # fmt: skip

    def _deviation(self, start: int, end: int, variant: _Variant) -> tuple[float, float]:
        torch = self.torch
        if end <= start:
            raise _Skip(f"segment [{start}, {end}) is empty")
        missing = [t for t in range(start, end) if t not in self.steps]
        if missing:
            raise _Skip(f"step {missing[0]} of segment [{start}, {end}) is not in the ledger")
        first, last = self._checkpoint(start), self._checkpoint(end)
        state = {k: v.double() for k, v in first["model"].items()}
        params = {n: state[n].clone() for n in self.trainable}
        fixed = {k: v for k, v in state.items() if k not in params}
        leaves = {n: torch.nn.Parameter(params[n].clone()) for n in self.trainable}
        opt = self._optimizer(first["optimizer"], leaves)
        h = self.header
        for t in range(start, end):
            rec = self.steps[t]
            clip = rec.clip_norm if rec.clip_norm is not None else h.clip_norm
            sigma = rec.noise_multiplier if rec.noise_multiplier is not None else h.noise_multiplier
            idx = torch.tensor(rec.indices.tolist(), dtype=torch.long)
            current = {n: leaves[n].detach() for n in self.trainable}
            total = self._clipped_sum(fixed, current, idx, clip if variant.clip else None)
            noise = self._noise(t, [total[n].shape for n in self.trainable])
            std = (sigma * clip if variant.scale_by_clip else sigma) * variant.noise
            denominator = h.denominator if not variant.realised else max(len(idx), 1)
            with torch.no_grad():
                for n, z in zip(self.trainable, noise, strict=True):
                    leaves[n].grad = (total[n] + std * z) / denominator
            opt.step()
            opt.zero_grad(set_to_none=True)
        num, den, worst = 0.0, 0.0, 0.0
        with torch.no_grad():
            for n in self.trainable:
                rec_end = last["model"][n].double()
                diff = leaves[n].detach() - rec_end
                num += float(diff.pow(2).sum())
                den += float((rec_end - state[n]).pow(2).sum())
                worst = max(worst, float(diff.abs().max()) if diff.numel() else 0.0)
        rel = (num**0.5) / max(den**0.5, 1e-12)
        rel = max(rel, self._state_deviation(opt, leaves, last["optimizer"]))
        return (rel if rel == rel else float("inf")), worst

    def _state_deviation(self, opt: Any, leaves: dict, recorded: dict) -> float:
        """Largest ‖s_ref − s_rec‖ / ‖s_rec‖ over the optimiser's state tensors.

        The optimiser state a checkpoint records (momentum, Adam's moments) is
        the starting point of the next segment's replay, so it is checked too:
        a state that differs from the reference's could hide a wrong update.
        """
        torch = self.torch
        worst = 0.0
        for i, name in enumerate(self.names):
            if name not in leaves:
                continue
            ref_state, rec_state = opt.state.get(leaves[name], {}), recorded["state"].get(i, {})
            if set(ref_state) != set(rec_state):
                return float("inf")
            for key, ref in ref_state.items():
                rec = rec_state[key]
                if not (torch.is_tensor(ref) and torch.is_tensor(rec)):
                    if ref != rec:
                        return float("inf")
                    continue
                ref, rec = ref.detach().double(), rec.detach().double()
                if ref.shape != rec.shape:
                    return float("inf")
                scale = float(rec.norm())
                diff = float((ref - rec).norm())
                worst = max(worst, diff / scale if scale > 0 else (0.0 if diff == 0 else 1.0))
        return worst

    def _optimizer(self, state: dict, leaves: dict) -> Any:
        torch = self.torch
        cls = getattr(torch.optim, self.extra["optimizer"])
        index = {i: n for i, n in enumerate(self.names)}
        groups = []
        for g in state["param_groups"]:
            ps = [leaves[index[i]] for i in g["params"] if index[i] in leaves]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ps})
        opt = cls(groups)
        remap: dict[Any, Any] = {}
        for g_state in state["param_groups"]:
            kept = [i for i in g_state["params"] if index[i] in leaves]
            remap.update(dict(zip(kept, range(len(remap), len(remap) + len(kept)), strict=True)))
        sd = {
            "state": {remap[i]: v for i, v in state["state"].items() if i in remap},
            "param_groups": [
                {**{k: v for k, v in g.items() if k != "params"},
                 "params": [remap[i] for i in g["params"] if i in remap]}
                for g in state["param_groups"]
            ],
        }  # fmt: skip
        opt.load_state_dict(sd)
        return opt
