"""JSON Lines interchange: runs from any framework (Opacus, ...) become ledgers.

One JSON object per line (docs/ledger-format.md §6):

* line 1, the run: ``{"type": "run", "dataset_size": 10000, "sampler": "poisson",
  "sampling_rate": 0.01, "noise_multiplier": 1.1, "clip_norm": 1.0,
  "delta": 1e-5, "claimed_epsilon": 2.0, "neighbouring": "add_remove"}``, plus
  any other :class:`RunHeader` field;
* one line per executed step: ``{"type": "step", "step": 0, "indices": [3, 17, 254]}``
  with optional :class:`Step` fields (``noise_multiplier``, ``clip_norm``,
  ``noise_std``, ``num_clipped``, ``max_grad_norm``, ...; missing per-step
  values mean "the run's");
* optional ``{"type": "resume", "step": k}``, ``{"type": "checkpoint", "step": k,
  "digest": "..."}`` and, last, ``{"type": "seal", "steps_executed": T, "final_step": t}``.

Steps are numbered from 0 without gaps (after a resume line, from its step);
a step that sampled no example is a line with ``"indices": []`` (dropping it
would hide the empty batches the sampling check counts).
Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"`` (strict JSON has no such numbers); both forms are read.

The ecosystem's spellings are forgiven where the meaning is unambiguous:
``neighboring`` (dp-accounting, Opacus, jax_privacy) is read as
``neighbouring`` and sampler names are case-insensitive.  An integer field
written as a float (``60000.0``, or an index ``3.0``) is refused with the
integer to write (floats silently lose indices above 2**24 in float32).  An
unknown field is refused with the nearest known name (``sample_rate`` →
``sampling_rate``; on a run line ``max_grad_norm`` → ``clip_norm``) and where
free-form fields go (``"extra": {...}`` on the run line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dpverify.errors import DpverifyError, InvalidArgument, UnusableInput
from dpverify.ledger._payload import record_to_dict
from dpverify.ledger.reader import LedgerScan
from dpverify.ledger.records import RECORD_TYPES, Record, RunHeader, Seal, Step
from dpverify.ledger.writer import LedgerWriter

__all__ = ["export_jsonl", "import_jsonl", "record_from_json", "record_to_json"]

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FLOAT_FIELDS = frozenset(
    {
        "sampling_rate",
        "clip_norm",
        "noise_multiplier",
        "noise_std",
        "max_grad_norm",
        "max_clipped_norm",
        "denominator",
        "delta",
        "claimed_epsilon",
        "expected_batch_size",
    }
)


#: Spellings other tools use for a field, by line type: alias -> our name.
_ALIASES: dict[str, dict[str, str]] = {
    "run": {"neighboring": "neighbouring"},
}
#: Fields other tools use with another meaning: (line type, their name) -> ours.
_SUGGEST: dict[tuple[str, str], str] = {
    ("run", "max_grad_norm"): "clip_norm",
    ("run", "sample_rate"): "sampling_rate",
    ("step", "sample_rate"): "sampling_rate",
    ("run", "noise_scale"): "noise_multiplier",
    ("run", "target_delta"): "delta",
    ("run", "epsilon"): "claimed_epsilon",
    ("run", "batch_size"): "expected_batch_size",
    ("step", "batch"): "indices",
}
#: Integer fields (an integer-valued float is accepted for them).
_INT_FIELDS = frozenset(
    {"dataset_size", "physical_batch_size", "step", "steps_executed", "final_step",
     "noise_draws", "num_clipped", "physical_batches", "num_nonfinite"}
)


def _did_you_mean(kind: str, name: str, known: set[str]) -> str:
    guess = _SUGGEST.get((kind, name))
    if guess is None:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        guess = close[0] if close else None
    hint = f" (did you mean {guess!r}?)" if guess else ""
    return f"{name!r}{hint}"


def _json_float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def record_to_json(record: Record) -> dict[str, Any]:
    """The interchange object of a record (``type`` first, ``None`` fields omitted)."""
    out: dict[str, Any] = {"type": record.TYPE}
    if isinstance(record, Step):
        for field in dataclasses.fields(record):
            value = getattr(record, field.name)
            if value is None:
                continue
            if field.name == "indices":
                value = value.tolist()
            elif field.name == "update_sketch":
                value = [_json_float(v) for v in value]
            elif isinstance(value, float):
                value = _json_float(value)
            out[field.name] = value
        return out
    for name, value in record_to_dict(record).items():
        if value is None or (isinstance(value, dict) and not value):
            continue
        out[name] = _json_float(value) if isinstance(value, float) else value
    return out


def _float_in(name: str, value: Any) -> Any:
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name}={value!r} must be a number")
    return value


def _int_in(name: str, value: Any) -> Any:
    """Refuse a float in an integer field, saying which integer to write."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            raise InvalidArgument(f"{name}={value!r} must be an integer: write {int(value)}")
        raise InvalidArgument(f"{name}={value!r} must be an integer")
    return value


def _indices_in(value: Any) -> np.ndarray:
    if not isinstance(value, list):
        raise InvalidArgument(f"indices={type(value).__name__} must be a list of integers")
    flt = next((v for v in value if isinstance(v, float)), None)
    if flt is not None:
        what = f"write {int(flt)}, not {flt!r}" if math.isfinite(flt) and flt.is_integer() else ""
        raise InvalidArgument(
            f"indices must be integers ({what or f'got {flt!r}'}): floats lose indices "
            "above 2**24 in float32, so convert with int64, not float"
        )
    bad = next((v for v in value if isinstance(v, bool) or not isinstance(v, int)), None)
    if bad is not None:
        raise InvalidArgument(
            f"indices must be a list of integers (example indices in [0, N)), got {bad!r}"
        )
    if any(v < 0 for v in value):
        raise InvalidArgument(
            "indices must be non-negative: drop padding entries (e.g. -1 for an empty slot) "
            "and write only the examples that were sampled"
        )
    if any(v >= 1 << 63 for v in value):
        raise InvalidArgument("indices must be non-negative 64-bit integers")
    arr = np.array(value, dtype=np.int64)
    arr.sort()
    if arr.size > 1 and np.any(arr[1:] == arr[:-1]):
        repeats = int(np.count_nonzero(arr[1:] == arr[:-1]))  # which ones is private
        raise InvalidArgument(
            f"indices repeat {repeats} example(s) (sampling with replacement is not supported)"
        )
    return arr


def record_from_json(obj: Any) -> Record:
    """Build a record from its interchange object.

    Raises:
        InvalidArgument: not an object, unknown ``type`` or field, bad value.
    """
    if not isinstance(obj, dict):
        raise InvalidArgument(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    cls = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(kind, str):
        known = ", ".join(RECORD_TYPES)
        raise InvalidArgument(f"type={kind!r} must be one of {known}")
    kind = str(kind)
    names = {f.name for f in dataclasses.fields(cls)}
    aliases = _ALIASES.get(kind, {})
    for alias, ours in aliases.items():
        if alias in obj:
            if ours in obj and obj[ours] != obj[alias]:
                raise InvalidArgument(f"{alias!r} and {ours!r} disagree: write one of them")
            obj = {ours if k == alias else k: v for k, v in obj.items()}
    unknown = sorted(set(obj) - names - {"type"})
    if unknown:
        where = (
            '; put free-form fields under "extra": {...} on the run line'
            if "extra" in names or kind == "step"
            else ""
        )
        listed = ", ".join(_did_you_mean(kind, u, names) for u in unknown)
        raise InvalidArgument(f"unknown field(s) for a {kind} line: {listed}{where}")
    kwargs: dict[str, Any] = {}
    for name, value in obj.items():
        if name == "type" or value is None:
            continue
        if name in _INT_FIELDS:
            value = _int_in(name, value)
        if name == "sampler" and isinstance(value, str):
            value = value.lower()
        if name == "indices":
            value = _indices_in(value)
        elif name == "update_sketch":
            if not isinstance(value, list):
                raise InvalidArgument("update_sketch must be a list of numbers")
            value = tuple(_float_in(name, v) for v in value)
        elif name in _FLOAT_FIELDS:
            value = _float_in(name, value)
        kwargs[name] = value
    if cls is Step and "indices" not in kwargs:
        raise InvalidArgument("a step line needs 'indices'")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in kwargs
    ]
    if required:
        listed = ", ".join(repr(name) for name in required)
        raise InvalidArgument(f"{kind} line is missing required field(s): {listed}")
    return cls(**kwargs)


def _lines(src: Path) -> Iterator[tuple[int, Any]]:
    try:
        f = open(src, encoding="utf-8")
    except FileNotFoundError:
        raise UnusableInput(f"{src}: no such file") from None
    except IsADirectoryError:
        raise UnusableInput(f"{src}: is a directory, not a JSON Lines file") from None
    except OSError as exc:
        raise UnusableInput(f"{src}: cannot read ({exc.strerror})") from None
    with f:
        try:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidArgument(f"{src}:{number}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise InvalidArgument(f"{src}: not UTF-8 text") from None


def import_jsonl(
    src: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, seal: bool = False
) -> Path:
    """Create ``out_dir/ledger`` from a JSON Lines file; returns the ledger path.

    The ledger is built in a temporary directory and renamed into place, so a
    failed import leaves nothing behind.  A file without a ``seal`` line may
    have been cut short, so the ledger stays unsealed (an audit says so) unless
    ``seal=True`` says the file is the whole run: it is then sealed at its end
    with the run line's claim.

    Raises:
        UnusableInput: ``src`` missing or unreadable, or ``out_dir`` is a file.
        InvalidArgument: a line is malformed, out of order or out of range,
            named as ``FILE:LINE: reason``; or ``out_dir/ledger`` exists.
    """
    src = Path(src)
    target = Path(out_dir) / "ledger"
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UnusableInput(f"{out_dir}: is a file, not a run directory")
    if target.exists():
        raise InvalidArgument(f"{target}: already exists (will not overwrite a ledger)")
    tmp = Path(out_dir) / f".ledger.import-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    made_out_dir = not Path(out_dir).exists()
    writer: LedgerWriter | None = None
    done = False
    try:
        lines = _lines(src)
        first = next(lines, None)
        if first is None:
            raise InvalidArgument(f"{src}: empty file (the first line must be the run)")
        writer = _start(src, first, tmp)
        sealed = False
        for number, obj in lines:
            if sealed:
                raise InvalidArgument(f"{src}:{number}: line after the seal")
            try:
                record = record_from_json(obj)
                if isinstance(record, RunHeader):
                    raise InvalidArgument("a second run line")
                if isinstance(record, Step) and record.step > writer.next_step:
                    raise InvalidArgument(
                        f"step={record.step} skips steps {writer.next_step}..{record.step - 1} "
                        "(steps with no examples missing? write every executed step, an "
                        'empty batch as "indices": [])'
                    )
                if isinstance(record, Seal):
                    writer.close(seal=record)
                    sealed = True
                elif record.TYPE == "resume":
                    writer = _resume(writer, record)
                else:
                    writer.append(record)  # type: ignore[arg-type]
            except DpverifyError as exc:
                raise InvalidArgument(f"{src}:{number}: {exc}") from None
        if not sealed:
            final = Seal(
                steps_executed=writer.steps_executed,
                final_step=writer.next_step,
                claimed_epsilon=writer.header.claimed_epsilon,
                delta=writer.header.delta,
            )
            writer.close(seal=final if seal else None)
        writer = None
        os.replace(tmp, target)
        done = True
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            shutil.rmtree(tmp)
        if made_out_dir and not done:
            with contextlib.suppress(OSError):  # the run dir this import created, if empty
                Path(out_dir).rmdir()
    return target


def _start(src: Path, first: tuple[int, Any], tmp: Path) -> LedgerWriter:
    number, obj = first
    if not isinstance(obj, dict) or obj.get("type") != "run":
        raise InvalidArgument(f"{src}:{number}: the first line must be the run (type 'run')")
    try:
        header = record_from_json(obj)
    except DpverifyError as exc:
        raise InvalidArgument(f"{src}:{number}: {exc}") from None
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return LedgerWriter.create(tmp, header, group_commit=4096)  # type: ignore[arg-type]


def _resume(writer: LedgerWriter, record: Any) -> LedgerWriter:
    if record.step > writer.next_step:
        raise InvalidArgument(f"resume step={record.step} skips steps (at most {writer.next_step})")
    path = writer.path
    writer.close()
    return LedgerWriter.resume(
        path, step=record.step, checkpoint_digest=record.checkpoint_digest, group_commit=4096
    )


def export_jsonl(
    ledger_path: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False
) -> int:
    """Write the ledger at ``ledger_path`` as JSON Lines to ``dst`` (mode 0600).

    Every record is written (run, steps, resumes, checkpoints, seal), so
    import → export → import reproduces the same records.  Returns the number
    of lines.  The file holds sampled indices: keep it private.

    Raises:
        UnusableInput: no ledger at ``ledger_path``.
        LedgerCorrupt: the ledger fails verification (nothing is written).
        InvalidArgument: ``dst`` exists and ``overwrite`` is false.
    """
    dst = Path(dst)
    if not dst.parent.is_dir():
        raise UnusableInput(f"{dst.parent}: no such directory")
    if dst.is_dir():
        raise UnusableInput(f"{dst}: is a directory")
    if dst.exists() and not overwrite:
        raise InvalidArgument(f"{dst}: already exists (pass overwrite=True to replace it)")
    scan = LedgerScan(ledger_path)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    count = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in scan:
                f.write(json.dumps(record_to_json(record), allow_nan=False))
                f.write("\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count
