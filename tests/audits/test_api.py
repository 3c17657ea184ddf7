"""The auditor's public surface is pinned, and importing it stays free of JAX."""

import subprocess
import sys

import audits

PUBLIC = {
    "CHECK_NAMES",
    "STATUSES",
    "SCHEMA_VERSION",
    "VERDICTS",
    "Certificate",
    "CheckResult",
    "audit_ledger",
    "run_audit",
    "write_json",
    "write_report",
}


def test_public_names_exist():
    missing = {name for name in PUBLIC if not hasattr(audits, name)}
    assert not missing
    assert audits.CHECK_NAMES == (
        "integrity", "configuration", "sampling", "mechanics", "privacy", "replay", "empirical"
    )  # fmt: skip
    assert set(audits.VERDICTS) == {"certified", "refuted", "unverifiable"}


def test_import_does_not_load_jax():
    code = (
        "import sys, audits, dpverify.cli._audit\n"
        "heavy = [m for m in ('jax', 'jaxlib', 'flax', 'optax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
