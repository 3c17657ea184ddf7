"""Tests for trainers.precision."""

import jax.numpy as jnp
import pytest

from dpverify.errors import InvalidArgument
from trainers.precision import (
    PRECISIONS,
    check_precision,
    compute_dtype,
    matmul_precision,
    precision_context,
    sketch_tolerance,
)


def test_precision_settings():
    assert PRECISIONS == ("float32", "tf32", "bf16")
    assert matmul_precision("float32") == "highest"
    assert matmul_precision("tf32") == "tensorfloat32"
    assert compute_dtype("bf16") == jnp.bfloat16 and compute_dtype("tf32") == jnp.float32
    assert sketch_tolerance("float32") < sketch_tolerance("tf32") < sketch_tolerance("bf16")
    with precision_context("float32"):
        assert float(jnp.dot(jnp.ones(3), jnp.ones(3))) == 3.0


@pytest.mark.parametrize("bad", ["fp16", "", None, "FLOAT32"])
def test_unknown_precision_is_invalid(bad):
    with pytest.raises(InvalidArgument, match="precision="):
        check_precision(bad)
