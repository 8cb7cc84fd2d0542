"""Tuplet margin loss (Yu & Tao, ICCV 2019).

Same numbers as pytorch-metric-learning's `TupletMarginLoss(margin, scale)`
(margin in degrees) with its CosineSimilarity and default mean reducer: for
each positive pair (a, p) with angle theta,
log(1 + sum_{n neg of a} exp(scale (cos(a, n) - cos(theta - margin)))),
averaged over the positive pairs; 0 if the batch has no positive or no
negative pair. Computed per anchor as softplus(logsumexp_n(scale cos(a, n)) -
scale cos(theta - margin)): O(N M), where PML forms (pos pairs x neg pairs).

Deliberate differences: cos(theta - m) is written cos cos m + sin theta sin m
with sin theta = sqrt(1 - cos^2) under a safe sqrt and cos clipped to [-1, 1],
so a duplicate positive (cos = 1) or rounding past 1 gives finite values and
gradients where PML's acos gives inf/NaN; and, as in multi_similarity.py,
PML's GenericPairLoss returns 0 when the batch has at most one positive and
one negative pair in total, where here the formula holds.
"""

import math

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity


def tuplet_margin_loss(
    embeddings: jax.Array, labels: jax.Array, *, margin: float = 5.73,
    scale: float = 64.0, mask: jax.Array | None = None,
    ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Tuplet margin loss of a labelled batch.

  Args:
    embeddings: (N, D); labels: (N,) integer class ids.
    margin: the angular margin on positives, in degrees; scale: the scale.
    mask: optional (N,) bool; False rows are padding, in no pair.
    ref_embeddings, ref_labels, ref_mask, self_index: optional reference set
      (see `metricjax.losses.pairs`).
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  s = similarity.cosine_similarity(x, y)
  m = math.radians(margin)
  c = jnp.clip(s, -1.0, 1.0)
  cos_minus = c * math.cos(m) + similarity.safe_sqrt(1.0 - c * c) * math.sin(m)
  lse_neg = pairs.masked_logsumexp(scale * s, neg)
  has_neg = jnp.any(neg, axis=1, keepdims=True)
  # An anchor without negatives: log(1 + 0) = 0.
  losses = jnp.where(has_neg,
                     jax.nn.softplus(lse_neg[:, None] - scale * cos_minus), 0.0)
  loss = pairs.masked_mean(losses, pos)
  return jnp.where(jnp.any(pos) & jnp.any(neg), loss, 0.0)
