"""ops.max_pool_2x2 against flax's max_pool: values and gradients, ties
included."""

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


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_ties_go_to_the_first_maximum_as_in_flax(padding, dtype):
  # Three levels: most windows hold ties, as flat backgrounds do.
  x = jax.random.randint(jax.random.key(2), (2, 9, 7, 3), 0, 3).astype(dtype)
  weights = jax.random.normal(jax.random.key(3), ops.max_pool_2x2(
      x, padding).shape).astype(dtype)
  ours = jax.grad(lambda x: jnp.sum(ops.max_pool_2x2(x, padding) * weights))
  theirs = jax.grad(lambda x: jnp.sum(
      nn.max_pool(x, (2, 2), (2, 2), padding) * weights))
  np.testing.assert_array_equal(ours(x), theirs(x))


def test_no_select_and_scatter_in_the_gradient():
  text = jax.jit(jax.grad(lambda x: ops.max_pool_2x2(x).sum())).lower(
      jnp.zeros((2, 8, 8, 3))).as_text()
  assert "select_and_scatter" not in text and "reduce_window" not in text


def test_tpu_programs_pool_with_flax_and_others_without_select_and_scatter():
  """The choice per platform, read from the lowered program: TPU keeps
  flax's max_pool (its select-and-scatter is native), the rest the
  reshape form."""
  grad = jax.jit(jax.grad(lambda x: ops.max_pool_2x2(x).sum()))
  x = jnp.zeros((2, 8, 8, 3))
  both = grad.trace(x).lower(lowering_platforms=("cpu", "tpu")).as_text()
  assert "select_and_scatter" in both or "reduce_window" in both
  with ops.pooling.portable():
    cpu_only = jax.jit(jax.grad(lambda x: ops.max_pool_2x2(x).sum())).lower(
        x).as_text()
  assert "select_and_scatter" not in cpu_only
