"""Distances and similarities between embeddings, as pytorch-metric-learning's.

A `Distance` is `fn(x, y) -> (N, M)` plus `is_inverted` (True for a
similarity: larger = closer), so a loss or a miner never branches on which
one it got: it orders and margins through `margin`, `hardest` and `easiest`,
as PML's BaseDistance does. Every distance first normalises the rows (p-norm,
torch.nn.functional.normalize's 1e-12 guard) unless normalize_embeddings is
False, then raises the matrix to `power`, also as PML's.

To add a distance: a function returning `Distance`, and one REGISTRY line.
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from metricjax.ops import similarity


class Distance(NamedTuple):
  fn: Callable[[jax.Array, jax.Array], jax.Array]
  is_inverted: bool


def margin(distance: Distance, x, y):
  """How much closer y is than x: PML's `distance.margin(x, y)`."""
  return y - x if distance.is_inverted else x - y


def _normalize(x: jax.Array, p: float) -> jax.Array:
  if p == 2:
    return similarity.l2_normalize(x)
  # |x|^p is differentiable at 0 for p >= 1; the norm is guarded as torch's.
  norm = _pnorm(jnp.abs(x), p, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, 1e-12)


def _pnorm(a: jax.Array, p: float, **kw) -> jax.Array:
  """p-norm of non-negative a; zero norms get a zero (not NaN) gradient."""
  if math.isinf(p):
    return jnp.max(a, **kw)
  s = jnp.sum(a ** p, **kw)
  positive = s > 0
  return jnp.where(positive, jnp.where(positive, s, 1.0) ** (1.0 / p), 0.0)


def _make(compute, *, is_inverted, normalize_embeddings, p, power):
  def fn(x, y):
    if normalize_embeddings:
      x, y = _normalize(x, p), _normalize(y, p)
    mat = compute(x, y)
    return mat if power == 1 else mat ** power
  return Distance(fn, is_inverted)


def lp(*, p: float = 2, power: float = 1,
       normalize_embeddings: bool = True) -> Distance:
  """PML's LpDistance (torch.cdist); p=2 by the expansion, O(N M) memory."""
  def compute(x, y):
    if p == 2:
      return similarity.pairwise_distance(x, y, kind="euclidean")
    # Other p broadcast (N, M, D): small batches only, as cdist's own.
    return _pnorm(jnp.abs(x[:, None, :] - y[None, :, :]), p, axis=-1)
  return _make(compute, is_inverted=False, p=p, power=power,
               normalize_embeddings=normalize_embeddings)


def dot_product(*, power: float = 1,
                normalize_embeddings: bool = True) -> Distance:
  """PML's DotProductSimilarity: it too normalises unless told not to."""
  return _make(lambda x, y: x @ y.T, is_inverted=True, p=2, power=power,
               normalize_embeddings=normalize_embeddings)


def cosine(*, power: float = 1) -> Distance:
  """PML's CosineSimilarity: DotProductSimilarity on normalised rows."""
  return dot_product(power=power, normalize_embeddings=True)


def snr(*, p: float = 2, power: float = 1,
        normalize_embeddings: bool = True) -> Distance:
  """PML's SNRDistance: var(a - r) / var(a), unbiased variances.

  var(a - r) is expanded over the centred rows, so the matrix costs O(N M)
  memory where PML forms the (N, M, D) differences.
  """
  def compute(x, y):
    xc = x - jnp.mean(x, -1, keepdims=True)
    yc = y - jnp.mean(y, -1, keepdims=True)
    xx, yy = jnp.sum(xc * xc, -1), jnp.sum(yc * yc, -1)
    diff = jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * xc @ yc.T, 0.0)
    return diff / xx[:, None]  # both variances' 1 / (D - 1) cancel
  return _make(compute, is_inverted=False, p=p, power=power,
               normalize_embeddings=normalize_embeddings)


REGISTRY: dict[str, Callable[..., Distance]] = {
    "lp": lp,
    "dot_product": dot_product,
    "cosine": cosine,
    "snr": snr,
}
