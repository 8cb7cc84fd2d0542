"""Regularizers, as pytorch-metric-learning's: a penalty on rows, reduced by
its own reducer (mean by default), times a weight, added to the loss. On the
embeddings (`embedding_regularizer=`, weight `embedding_reg_weight`) or on a
loss's learnable class vectors (`weight_regularizer=`, `weight_reg_weight`:
the rows of W.t(), the proxies, SoftTriple's centres), as `build` attaches
them (compose.py).

A regularizer is `fn(x, valid)` on the raw rows (padding rows are not
`valid`), returning the per-row penalties (N,) or, where its elements are
not rows, `Penalties(losses, weights, divisor)` (sparse_centers: pairs of
centres, reduced by PML's DivisorReducer). regular_face and sparse_centers
use their PML default distance, CosineSimilarity (the one they make sense
with). To add one: the function and a REGISTRY line (and DEFAULT_REDUCERS
where its PML default reducer is not mean).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.losses import distances as distances_lib
from metricjax.ops import similarity


class Penalties(NamedTuple):
  losses: jax.Array  # any shape
  weights: jax.Array  # same shape: 1 for an element, 0 for none
  divisor: jax.Array | float | None = None  # the divisor reducer's


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


def regular_face():
  """RegularFaceRegularizer (Zhao et al., CVPR 2019): per row, the cosine to
  its most similar other row (the argmax is a constant, as PML's no_grad)."""
  def fn(x, valid):
    cos = similarity.cosine_similarity(x)
    others = valid[None, :] & ~jnp.eye(x.shape[0], dtype=bool)
    nearest = jnp.argmax(jnp.where(others, jax.lax.stop_gradient(cos),
                                   -jnp.inf), axis=1)
    return jnp.take_along_axis(cos, nearest[:, None], axis=1)[:, 0]
  return fn


def sparse_centers(*, num_classes: int, centers_per_class: int):
  """SparseCentersRegularizer: for the centres c, k < l of each class (rows
  c * centers_per_class + k), sqrt(2 - min(2 cos, 2)), divided by twice
  their number (PML's default reducer, divisor)."""
  if centers_per_class <= 1:
    raise ValueError("sparse_centers needs centers_per_class > 1")
  total = num_classes * centers_per_class
  block = np.triu(np.ones((centers_per_class, centers_per_class), bool), 1)
  pairs_mask = np.kron(np.eye(num_classes, dtype=bool), block)

  def fn(x, valid):
    del valid  # class vectors: every row is one
    if x.shape[0] != total:
      raise ValueError(
          f"sparse_centers(num_classes={num_classes}, centers_per_class="
          f"{centers_per_class}) regularizes {total} rows, got {x.shape[0]}")
    cos = similarity.cosine_similarity(x)
    # PML adds finfo.tiny under the sqrt; safe_sqrt keeps cos = 1 finite.
    losses = similarity.safe_sqrt(2.0 - jnp.minimum(2.0 * cos, 2.0))
    return Penalties(losses, jnp.asarray(pairs_mask, x.dtype),
                     2.0 * float(pairs_mask.sum()))
  return fn


# PML's default reducer where it is not mean.
DEFAULT_REDUCERS = {"sparse_centers": "divisor"}


REGISTRY: dict[str, Callable[..., Callable[[jax.Array, jax.Array],
                                           jax.Array]]] = {
    "lp": lp,
    "zero_mean": zero_mean,
    "center_invariant": center_invariant,
    "regular_face": regular_face,
    "sparse_centers": sparse_centers,
}
