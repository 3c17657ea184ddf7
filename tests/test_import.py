"""`import dpverify` (and its CLI) must stay light: no JAX at import time."""

import subprocess
import sys

import pytest

LIGHT_MODULES = [
    "dpverify",
    "dpverify.ledger",
    "dpverify.samplers",
    "dpverify.stats",
    "dpverify.accounting",
    "dpverify.testing",
    "dpverify.cli",
]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_import_does_not_load_jax(module):
    code = (
        f"import sys, {module}\n"
        f"import dpverify.cli as c; c.build_parser()\n"
        "heavy = [m for m in ('jax', 'jaxlib', 'flax', 'optax', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
