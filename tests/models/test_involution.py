"""The Involution layer (the op plus its kernel generator) as a Flax module."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax.models.involution import Involution


def test_module_stride_two():
  layer = Involution(stride=2)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 7, 9, 32)),
                  jnp.float32)
  variables = jax.jit(functools.partial(layer.init, train=False))(
      jax.random.key(0), x)
  out, updates = jax.jit(functools.partial(
      layer.apply, train=True, mutable=["batch_stats"]))(variables, x)
  assert out.shape == (2, 4, 5, 32)
  assert np.all(np.isfinite(out))
  # 32 channels / 16 per group = 2 groups of 3x3 taps from 32 / 4 = 8 units.
  assert variables["params"]["span"]["kernel"].shape == (1, 1, 8, 18)
  assert updates["batch_stats"]["reduce_bn"]["mean"].shape == (8,)


def test_module_few_channels_and_bad_groups():
  init = functools.partial(Involution().init, train=False)
  shapes = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 5, 5, 3)))
  # One group; min_reduced_channels keeps the generator 4 units wide.
  assert shapes["params"]["span"]["kernel"].shape == (1, 1, 4, 9)
  with pytest.raises(ValueError, match="group_channels"):
    jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 5, 5, 24)))
