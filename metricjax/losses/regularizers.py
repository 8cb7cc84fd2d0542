"""Embedding regularizers, as pytorch-metric-learning's
`embedding_regularizer=`: a per-embedding penalty, reduced by its own reducer
(mean by default), times the loss's `embedding_reg_weight`, added to the
loss.

A regularizer is `fn(x, valid) -> (N,)` per-row penalties on the raw rows
(padding rows are not `valid`). PML's weight regularizers (regular_face,
sparse_centers) act on a loss's learnable weights, which the composable pair
and triplet losses do not have. To add one: the function and a REGISTRY line.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from metricjax.losses import distances as distances_lib


def lp(*, p: float = 2, power: float = 1):
  """LpRegularizer: ||x||_p ** power per row."""
  def fn(x, valid):
    del valid
    norm = distances_lib._pnorm(jnp.abs(x), p, axis=1)  # pylint: disable=protected-access
    return norm if power == 1 else norm ** power
  return fn


def zero_mean():
  """ZeroMeanRegularizer: |sum of a row's entries|."""
  return lambda x, valid: jnp.abs(jnp.sum(x, axis=1))


def center_invariant():
  """CenterInvariantRegularizer: (||x||^2 - mean ||x||^2)^2 / 4, the mean
  over the valid rows."""
  def fn(x, valid):
    sq = jnp.sum(jnp.square(x), axis=1)
    w = valid.astype(x.dtype)
    mean = jnp.sum(sq * w) / jnp.maximum(jnp.sum(w), 1.0)
    return jnp.square(sq - mean) / 4.0
  return fn


REGISTRY: dict[str, Callable[..., Callable[[jax.Array, jax.Array],
                                           jax.Array]]] = {
    "lp": lp,
    "zero_mean": zero_mean,
    "center_invariant": center_invariant,
}
