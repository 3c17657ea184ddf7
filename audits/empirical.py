"""The empirical check: does the trained model itself contradict the claimed ε?

One-run canary auditing (Steinke, Nasr & Jagielski 2023, arXiv:2305.08846;
:mod:`dpverify.empirical`).  The check needs neither the noise key nor replay:

1. the canaries' secret design comes from ``RUN_DIR/private.json`` (the
   canary key, given to the auditor only), checked against the
   ``canary_key_digest`` the ledger header committed to before training;
2. each canary's score is computed from the released trajectory — the
   parameters of checkpoint 0 and of the final checkpoint, both verified
   against their ledger digests — as −⟨θ_T − θ₀, u_i⟩/C;
3. :func:`dpverify.empirical.audit_scores` turns scores and secret inclusion
   bits into an ε lower bound at the stated confidence (δ = the claim's δ).

Imported runs (other frameworks, or a run whose checkpoints are elsewhere)
may instead hand the auditor a scores file: JSON
``{"scores": [...], "included": [true, false, ...]}``; such scores are taken
as given (nothing binds them to the run), so they can refute a claim but the
certificate says where they came from.

Status: ``fail`` when the lower bound exceeds the claimed ε (the verdict is
refuted: the trained model itself contradicts the claim); ``pass`` otherwise
— which only means the canaries found no contradiction: a lower bound never
confirms an upper bound; ``skip`` when the run has no canaries or the
secret design / checkpoints are not available.  An honest run fails with
probability at most 1 − confidence.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from audits.check import CheckResult
from dpverify.errors import InvalidArgument, UnusableInput

__all__ = ["DEFAULT_CONFIDENCE", "check_empirical", "load_scores_file"]

#: Confidence of the empirical lower bound unless told otherwise.
DEFAULT_CONFIDENCE = 0.95
_HIST_BINS = 30
_PRIVATE_FILE = "private.json"


def load_scores_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, included)`` from a canary scores JSON file.

    Raises:
        UnusableInput: the file is missing, not JSON, or lacks the two arrays.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        scores = np.asarray(data["scores"], dtype=float)
        included = np.asarray(data["included"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        raise UnusableInput(
            f"canary scores file {path}: {why} (expected JSON with 'scores' and 'included')"
        ) from None
    return scores, included


def check_empirical(
    ledger: Any,
    run_dir: Path | None,
    *,
    claimed_epsilon: float | None,
    delta: float | None,
    confidence: float = DEFAULT_CONFIDENCE,
    scores_path: str | Path | None = None,
) -> CheckResult:
    """The ``empirical`` check (see the module docstring)."""
    from dpverify.empirical import audit_scores

    if scores_path is not None:
        scores, included = load_scores_file(scores_path)
        source = f"imported scores file {Path(scores_path).name}"
    else:
        got = _scores_from_run(ledger, run_dir)
        if isinstance(got, str):
            return CheckResult(name="empirical", status="skip", reason=got)
        scores, included = got
        source = "released checkpoints (first and final) and the run's canary key"
    if delta is None:
        return CheckResult(
            name="empirical", status="skip", reason="the run states no δ to test against"
        )
    try:
        audit = audit_scores(scores, included, delta=float(delta), confidence=confidence)
    except InvalidArgument as exc:
        raise UnusableInput(f"canary scores: {exc}") from None
    lb = audit.epsilon_lower_bound
    details = {**audit.to_json(), "source": source, "histogram": _histogram(scores, included)}
    details["included"] = audit.included  # count only: the bits stay secret
    conf = f"{confidence:.0%}"
    head = (
        f"empirical ε ≥ {lb:.3g} at {conf} confidence from {audit.canaries} canaries "
        f"({audit.correct}/{audit.guesses} guesses right)"
    )
    if claimed_epsilon is None:
        return CheckResult(
            name="empirical",
            status="skip",
            reason=f"{head}; the run claims no ε to compare with",
            details=details,
        )
    if lb > claimed_epsilon:
        return CheckResult(
            name="empirical",
            status="fail",
            reason=(
                f"the trained model itself contradicts the claim: {head} exceeds the claimed "
                f"ε = {claimed_epsilon:.4g}"
            ),
            details=details,
        )
    return CheckResult(
        name="empirical",
        status="pass",
        reason=(
            f"{head}, not above the claimed ε = {claimed_epsilon:.4g} (a lower bound: it can "
            "refute a claim, never confirm one)"
        ),
        details=details,
    )


def _histogram(scores: np.ndarray, included: np.ndarray) -> dict[str, list]:
    """Aggregate score histograms of included and excluded canaries (for the plot)."""
    s = np.asarray(scores, dtype=float)
    b = np.asarray(included).astype(bool)
    lo, hi = float(np.min(s)), float(np.max(s))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, _HIST_BINS + 1)
    return {
        "edges": [float(e) for e in edges],
        "included": [int(c) for c in np.histogram(s[b], bins=edges)[0]],
        "excluded": [int(c) for c in np.histogram(s[~b], bins=edges)[0]],
    }


def _scores_from_run(ledger: Any, run_dir: Path | None) -> tuple[np.ndarray, np.ndarray] | str:
    """(scores, included) from the run's checkpoints and canary key, or why not."""
    from dpverify.empirical.canaries import canary_key_digest, design_canaries, flatten_params

    extra = dict(getattr(ledger.header, "extra", None) or {})
    count = extra.get("canaries")
    if not count:
        return "the run has no canaries (train with --canaries M for an empirical lower bound)"
    if run_dir is None:
        return "no run directory: canary scores need its checkpoints and private.json"
    try:
        private = json.loads((run_dir / _PRIVATE_FILE).read_text())
        key = bytes.fromhex(str(private["canaries"]["key"]))
    except (OSError, ValueError, KeyError, TypeError):
        return (
            f"the canary key ({_PRIVATE_FILE}, given to the auditor only) is not available "
            "in the run directory"
        )
    committed = extra.get("canary_key_digest")
    if committed is None or canary_key_digest(key) != committed:
        return (
            "the canary key does not match the ledger header's canary_key_digest: its "
            "inclusion bits cannot be trusted"
        )
    first, final = _trajectory_ends(ledger)
    if first is None or final is None or first.step == final.step:
        return "the ledger records no checkpoint 0 and later checkpoint to score canaries on"
    try:
        import msgpack  # noqa: F401  (the checkpoint format; installed with the [jax] extra)
    except ImportError:
        return "reading the run's checkpoints needs msgpack (install dpverify[jax])"
    try:
        theta0 = flatten_params(_read_params(run_dir, first))
        theta_t = flatten_params(_read_params(run_dir, final))
    except UnusableInput as exc:
        return str(exc)
    clip = float(ledger.header.clip_norm)
    design = design_canaries(key, count=int(count), num_params=theta0.size, clip_norm=clip)
    return design.scores(theta0, theta_t), design.included


def _trajectory_ends(ledger: Any) -> tuple[Any, Any]:
    """The Checkpoint records of step 0 and of the last step (the released model)."""
    checkpoints = list(getattr(ledger, "checkpoints", ()) or ())
    if not checkpoints:
        return None, None
    first = next((c for c in checkpoints if c.step == 0), None)
    final = max(reversed(checkpoints), key=lambda c: c.step)  # the last record of that step
    return first, final


def _read_params(run_dir: Path, record: Any) -> dict:
    """The ``params`` tree of a dpverify checkpoint file, verified against its digest.

    Reads the msgpack format of ``docs/ledger-format.md``/``trainers.checkpoint``
    without JAX: arrays are msgpack extension 1 holding ``(shape, dtype, bytes)``.
    """
    import msgpack

    path = run_dir / (record.path or f"checkpoints/step-{int(record.step):08d}.msgpack")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnusableInput(f"checkpoint {path.name} cannot be read: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != record.digest:
        raise UnusableInput(f"checkpoint {path.name} does not match its ledger digest")

    def ext(code: int, payload: bytes) -> Any:
        if code in (1, 3):
            shape, dtype, buf = msgpack.unpackb(payload, raw=False)
            arr = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)
            return arr if code == 1 else arr[()]
        raise UnusableInput(f"checkpoint {path.name}: unsupported msgpack extension {code}")

    try:
        raw = msgpack.unpackb(data, ext_hook=ext, raw=False, strict_map_key=False)
        params = raw["params"]
    except UnusableInput:
        raise
    except Exception as exc:
        raise UnusableInput(f"checkpoint {path.name} is not readable: {exc}") from None
    if not isinstance(params, dict):
        raise UnusableInput(f"checkpoint {path.name} holds no parameter tree")
    return params
