"""Tests for trainers.jaxpr_cost: FLOP counts of products and convolutions, by hand."""

import jax
import jax.numpy as jnp
import numpy as np

from trainers.jaxpr_cost import matmul_flops, uses_convolution


def _conv(x, k, groups=1):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )  # fmt: skip


def test_a_product_costs_two_flops_per_term():
    x, w = jnp.ones((3, 5)), jnp.ones((5, 7))
    assert matmul_flops(jax.make_jaxpr(jnp.dot)(x, w)) == 2 * 3 * 7 * 5
    # batched: 4 products of (3, 5) × (5, 7)
    xb, wb = jnp.ones((4, 3, 5)), jnp.ones((4, 5, 7))
    assert matmul_flops(jax.make_jaxpr(jnp.matmul)(xb, wb)) == 4 * 2 * 3 * 7 * 5
    # element-wise work is not counted
    assert matmul_flops(jax.make_jaxpr(lambda a: jnp.tanh(a) * 2)(x)) == 0


def test_a_convolution_costs_its_window_per_output():
    x = jnp.ones((1, 8, 8, 2))
    jaxpr = jax.make_jaxpr(_conv)(x, jnp.ones((3, 3, 2, 4)))
    assert uses_convolution(jaxpr)
    assert matmul_flops(jaxpr) == 2 * (8 * 8 * 4) * (3 * 3 * 2)
    grouped = jax.make_jaxpr(lambda a, k: _conv(a, k, groups=2))(x, jnp.ones((3, 3, 1, 4)))
    assert matmul_flops(grouped) == 2 * (8 * 8 * 4) * (3 * 3 * 1)


def test_sub_computations_scan_length_and_the_largest_branch():
    x, w = jnp.ones((3, 5)), jnp.ones((5, 5))
    one = 2 * 3 * 5 * 5

    def nested(x, w):
        return jax.jit(jnp.dot)(x, w)

    assert matmul_flops(jax.make_jaxpr(nested)(x, w)) == one

    def scanned(x, w):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=6)[0]

    assert matmul_flops(jax.make_jaxpr(scanned)(x, w)) == 6 * one

    def branches(i, x, w):
        return jax.lax.cond(i > 0, lambda: x @ w @ w, lambda: x @ w)

    assert matmul_flops(jax.make_jaxpr(branches)(1, x, w)) == 2 * one

    def grad_of_conv(k, x):
        return jax.grad(lambda k_: jnp.sum(jax.jit(_conv)(x, k_)))(k)

    jaxpr = jax.make_jaxpr(grad_of_conv)(jnp.ones((3, 3, 2, 4)), jnp.ones((1, 8, 8, 2)))
    assert uses_convolution(jaxpr)
    assert not uses_convolution(jax.make_jaxpr(nested)(x, w))
    assert np.isfinite(matmul_flops(jaxpr)) and matmul_flops(jaxpr) > 0
