"""ops.max_pool_2x2 against flax's max_pool: values, and gradients wherever
the maximum of each window is unique."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax import ops


@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (2, 7, 7, 4), (1, 5, 8, 2)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_same_values_and_gradients_as_flax(shape, padding):
  x = jax.random.normal(jax.random.key(0), shape)  # Ties have probability 0.
  weights = jax.random.normal(jax.random.key(1), ops.max_pool_2x2(
      x, padding).shape)
  ours = lambda x: jnp.sum(ops.max_pool_2x2(x, padding) * weights)
  flax_ = lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2), padding) * weights)
  np.testing.assert_array_equal(ops.max_pool_2x2(x, padding),
                                nn.max_pool(x, (2, 2), (2, 2), padding))
  np.testing.assert_array_equal(jax.grad(ours)(x), jax.grad(flax_)(x))


def test_ties_share_the_gradient():
  x = jnp.zeros((1, 2, 2, 1))
  np.testing.assert_array_equal(
      jax.grad(lambda x: ops.max_pool_2x2(x).sum())(x), jnp.full(x.shape, 0.25))


def test_no_select_and_scatter_in_the_gradient():
  text = jax.jit(jax.grad(lambda x: ops.max_pool_2x2(x).sum())).lower(
      jnp.zeros((2, 8, 8, 3))).as_text()
  assert "select_and_scatter" not in text and "reduce_window" not in text
