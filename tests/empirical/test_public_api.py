"""The public names of dpverify.empirical (accidental removals fail); no JAX on import."""

import subprocess
import sys

import dpverify.empirical

PUBLIC = {
    "GUESS_FAMILIES",
    "METHOD",
    "OneRunAudit",
    "audit_scores",
    "correct_guesses",
    "epsilon_from_counts",
    "guess_family",
    "p_value",
}


def test_public_names_exist():
    assert not {n for n in PUBLIC if not hasattr(dpverify.empirical, n)}


def test_import_does_not_import_jax():
    code = (
        "import sys, dpverify.empirical, dpverify.empirical.canaries, audits.empirical; "
        "print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
