"""The certificate: the audit's verdict, every check, ε, and the ledger commitment.

JSON schema (``schema_version`` 1; documented in ``docs/certificate.md``):

* ``schema`` — always ``"dpverify-certificate"``; ``schema_version`` — 1.
* ``verdict`` — ``"certified"``, ``"refuted"`` or ``"unverifiable"``;
  ``verdict_reason`` — one line.
* ``checks`` — list of ``{"name", "status", "p_value", "reason", "details"}``.
* ``epsilon`` — ``{"rdp", "pld", "prv", "reasons"}`` exactly as
  ``dpverify epsilon --json`` prints it, or ``null`` when not computed.
* ``claimed_epsilon``, ``delta`` — the audited claim.
* ``steps`` (executed steps, repeats after resumes included), ``logical_steps``.
* ``ledger_head`` — the hash-chain head (hex): the public commitment to the
  ledger audited; ``sealed``.
* ``empirical`` — the canaries' empirical ε lower bound
  (``{"epsilon_lower_bound", "confidence", "canaries", "method", "delta",
  "guesses", "correct", "status"}``), or ``null`` when the empirical check
  computed none (no canaries, or their secret design was not given).
* ``run`` — the public run configuration from the ledger header (no noise key,
  no seed, no indices).
* ``scope`` — what the verdict covers: one entry per part (``integrity``,
  ``sampling``, ``accounting``, ``mechanics``, ``replay``; other parts may be
  added), each ``{"verified": bool, "reason": str, "check": name, "status":
  status}``; ``replay`` also holds ``coverage`` (``steps_replayed``,
  ``steps_executed``, ``segments``, ``includes_final_parameters``, ``seed``)
  when replay ran.  A part is verified only when its check *passed*: a
  warning, a skip or a failure leaves it unverified.
* ``dpverify_version``, ``created`` (ISO 8601 UTC).

Compatibility rule: keys are never removed and their meaning never changes;
new keys may be added without bumping ``schema_version``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audits.check import CheckResult, jsonable
from audits.evidence import AuditEvidence
from dpverify._validate import check_choice
from dpverify.errors import InvalidArgument, UnusableInput

__all__ = [
    "PUBLIC_HEADER_FIELDS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SCOPE_PARTS",
    "VERDICTS",
    "Certificate",
    "empirical_section",
    "public_run_config",
    "scope_line",
    "scope_of",
    "write_json",
]

SCHEMA = "dpverify-certificate"
SCHEMA_VERSION = 1

#: Verdicts, with their CLI exit codes.
VERDICTS = {"certified": 0, "refuted": 1, "unverifiable": 1}

#: Header fields copied into the certificate; everything else stays private.
PUBLIC_HEADER_FIELDS = (
    "dataset_size",
    "sampler",
    "sampler_params",
    "sampling_rate",
    "noise_multiplier",
    "clip_norm",
    "delta",
    "claimed_epsilon",
    "neighbouring",
    "accountant",
    "expected_batch_size",
    "physical_batch_size",
    "precision",
    "task",
    "software",
    "dataset_fingerprint",
    "noise_key_digest",
    "run_id",
    "created",
)


#: Scope part → (the check that verifies it, how the verdict line names it).
#: Owners of new checks add their part here; parts are never removed.
SCOPE_PARTS: dict[str, tuple[str, str]] = {
    "integrity": ("integrity", "ledger integrity"),
    "sampling": ("sampling", "sampling"),
    "accounting": ("privacy", "accounting"),
    "mechanics": ("mechanics", "recorded mechanics"),
    "replay": ("replay", "clipping and noise (replay)"),
    "empirical": ("empirical", "empirical ε lower bound (canaries)"),
}
#: Parts left out of the scope line when their check was skipped (optional evidence).
_OPTIONAL_PARTS = ("empirical",)


def scope_of(checks: Any) -> dict[str, dict[str, Any]]:
    """The certificate's ``scope`` from its checks (see the module docstring)."""
    by_name = {c.name: c for c in checks}
    out: dict[str, dict[str, Any]] = {}
    for part, (check_name, _label) in SCOPE_PARTS.items():
        c = by_name.get(check_name)
        if c is None:
            continue
        entry: dict[str, Any] = {
            "verified": c.status == "pass",
            "check": check_name,
            "status": c.status,
            "reason": c.reason,
        }
        if part == "replay" and "steps_replayed" in c.details:
            entry["coverage"] = {
                k: c.details.get(k)
                for k in (
                    "steps_replayed",
                    "steps_executed",
                    "segments",
                    "includes_final_parameters",
                    "seed",
                )
            }
        out[part] = entry
    return out


def scope_line(verdict: str, scope: Mapping[str, Any]) -> str:
    """One line after the verdict, e.g. ``CERTIFIED — sampling and accounting verified;
    clipping and noise NOT verified (no replay)``."""

    def join(words: list[str]) -> str:
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

    yes, no, replay = [], [], None
    for part, entry in scope.items():
        label = SCOPE_PARTS.get(part, (part, part))[1]
        if part == "integrity":
            continue  # the verdict itself says whether the ledger is intact
        if part in _OPTIONAL_PARTS and entry["status"] == "skip":
            continue
        if part == "replay":
            cov = entry.get("coverage") or {}
            if entry["verified"]:
                final = (
                    ", including the final parameters"
                    if cov.get("includes_final_parameters")
                    else ""
                )
                replay = (
                    f"clipping and noise verified by replay of {cov.get('steps_replayed')} of "
                    f"{cov.get('steps_executed')} steps{final}"
                )
            else:
                why = {"skip": "no replay", "warn": "replay incomplete", "fail": "replay failed"}
                replay = (
                    f"clipping and noise NOT verified ({why.get(entry['status'], 'no replay')})"
                )
        elif entry["verified"]:
            yes.append(label)
        else:
            no.append(f"{label} NOT verified ({entry['status']})")
    parts = [f"{join(yes)} verified"] if yes else []
    parts.extend(no)
    if replay:
        parts.append(replay)
    return f"{verdict.upper()} — {'; '.join(parts) if parts else 'nothing verified'}"


def public_run_config(header: Any) -> dict[str, Any]:
    """The public fields of a run header, JSON-ready (never ``extra``, seeds or keys)."""
    out = {name: getattr(header, name, None) for name in PUBLIC_HEADER_FIELDS}
    out["sampler_params"] = {
        k: v for k, v in dict(out["sampler_params"] or {}).items() if k != "seed"
    }
    out["software"] = dict(out["software"] or {})
    return jsonable(out)


#: Fields of the empirical check's details copied into the certificate's ``empirical``.
_EMPIRICAL_FIELDS = (
    "epsilon_lower_bound",
    "confidence",
    "canaries",
    "method",
    "delta",
    "guesses",
    "correct",
    "source",
)


def empirical_section(check: CheckResult) -> dict[str, Any] | None:
    """The certificate's ``empirical`` section from the empirical check's result."""
    details = dict(check.details or {})
    if check.name != "empirical" or "epsilon_lower_bound" not in details:
        return None
    out = {k: details.get(k) for k in _EMPIRICAL_FIELDS}
    out["status"] = check.status
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Certificate:
    """The outcome of an audit.

    Attributes:
        verdict: ``"certified"`` (every check passed or warned and the claim
            holds), ``"refuted"`` (a check failed or the claim is below the
            recomputed ε) or ``"unverifiable"`` (ledger corrupt or
            inconsistent, or no claim to certify).
        verdict_reason: one line explaining the verdict.
        checks: every check's result, in the order run.
        epsilon: ``EpsilonReport.to_json()`` or ``None``.
        claimed_epsilon: the audited claim (seal's, else header's).
        delta: δ of the claim.
        steps: executed steps (repeats after resumes included).
        logical_steps: distinct logical steps.
        ledger_head: hash-chain head (hex).
        sealed: whether the ledger was sealed.
        run: public run configuration (see :data:`PUBLIC_HEADER_FIELDS`).
        dpverify_version: version of the auditor.
        created: ISO 8601 UTC time of the audit.
        evidence: aggregates for the report's plots (not written to JSON).
        empirical: the canaries' lower bound (:func:`empirical_section`) or ``None``.
    """

    verdict: str
    verdict_reason: str
    checks: tuple[CheckResult, ...]
    epsilon: Mapping[str, Any] | None = None
    claimed_epsilon: float | None = None
    delta: float | None = None
    steps: int | None = None
    logical_steps: int | None = None
    ledger_head: str | None = None
    sealed: bool | None = None
    run: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dpverify_version: str = ""
    created: str = dataclasses.field(default_factory=_now)
    evidence: AuditEvidence | None = dataclasses.field(default=None, repr=False)
    empirical: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        check_choice("verdict", self.verdict, tuple(VERDICTS))
        object.__setattr__(self, "checks", tuple(self.checks))
        for c in self.checks:
            if not isinstance(c, CheckResult):
                raise InvalidArgument(
                    f"checks must hold CheckResult objects, got {type(c).__name__}"
                )
        if not self.dpverify_version:
            from dpverify import __version__

            object.__setattr__(self, "dpverify_version", __version__)

    @property
    def exit_code(self) -> int:
        """CLI exit code: 0 certified, 1 refuted or unverifiable."""
        return VERDICTS[self.verdict]

    def check(self, name: str) -> CheckResult:
        """The result of the check called ``name``.

        Raises:
            InvalidArgument: if no check has that name.
        """
        for c in self.checks:
            if c.name == name:
                return c
        raise InvalidArgument(
            f"name={name!r} must be one of {', '.join(c.name for c in self.checks)}"
        )

    @property
    def scope(self) -> dict[str, dict[str, Any]]:
        """What the verdict covers, part by part (see :func:`scope_of`)."""
        return scope_of(self.checks)

    def verified(self, part: str) -> bool:
        """Whether scope part ``part`` was verified.

        Raises:
            InvalidArgument: ``part`` is not a scope part.
        """
        check_choice("part", part, tuple(SCOPE_PARTS))
        return bool(self.scope.get(part, {}).get("verified", False))

    @property
    def scope_text(self) -> str:
        """The scope line printed right after the verdict."""
        return scope_line(self.verdict, self.scope)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if c.failed)

    def to_json(self) -> dict[str, Any]:
        """The certificate as JSON-ready data (schema in the module docstring)."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "claimed_epsilon": jsonable(self.claimed_epsilon),
            "delta": jsonable(self.delta),
            "steps": self.steps,
            "logical_steps": self.logical_steps,
            "ledger_head": self.ledger_head,
            "sealed": self.sealed,
            "epsilon": jsonable(dict(self.epsilon)) if self.epsilon is not None else None,
            "checks": [c.to_dict() for c in self.checks],
            "empirical": jsonable(dict(self.empirical)) if self.empirical is not None else None,
            "run": jsonable(dict(self.run)),
            "scope": jsonable(self.scope),
            "dpverify_version": self.dpverify_version,
            "created": self.created,
        }

    def summary_text(self) -> str:
        """A few human lines: the verdict first, then one line per check."""
        eps = self.epsilon or {}
        tight = None
        if eps.get("pld"):
            tight = ("PLD", eps["pld"].get("epsilon"))
        elif eps.get("prv"):
            tight = ("PRV upper", eps["prv"].get("upper"))
        lines = [f"verdict: {self.verdict.upper()} — {_one_line(self.verdict_reason)}"]
        lines.append(f"scope: {_one_line(self.scope_text)}")
        claim = "none" if self.claimed_epsilon is None else f"{self.claimed_epsilon:g}"
        delta = "n/a" if self.delta is None else f"{self.delta:g}"
        recomputed = (
            f"; recomputed {tight[0]} ε = {tight[1]:.4g}" if tight and tight[1] is not None else ""
        )
        lines.append(f"claimed ε = {claim} at δ = {delta}{recomputed}; {self.steps} steps executed")
        for c in self.checks:
            p = f" (p = {c.p_value:.2g})" if c.p_value is not None else ""
            lines.append(f"  [{c.status:>4}] {c.name}: {_one_line(c.reason)}{p}")
        if self.ledger_head:
            lines.append(f"ledger head: {self.ledger_head}")
        return "\n".join(lines)


def _one_line(text: str) -> str:
    """``text`` without line breaks or control characters (a reason quoting a header
    field must not start a line of its own in the terminal summary)."""
    return "".join(" " if (ord(ch) < 32 or ch in "\x7f\x85\u2028\u2029") else ch for ch in text)


def write_json(certificate: Certificate, path: str | os.PathLike[str]) -> Path:
    """Write ``certificate.to_json()`` to ``path`` (atomically: temp file + rename).

    Returns:
        The path written.

    Raises:
        UnusableInput: if the parent directory does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UnusableInput(f"cannot write {path}: directory {path.parent} does not exist")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(certificate.to_json(), fh, indent=2, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
