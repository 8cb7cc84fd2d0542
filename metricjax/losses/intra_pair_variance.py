"""Intra-pair variance loss (Yu et al., "Deep metric learning with tuplet
margin loss", ICCV 2019).

Same numbers as pytorch-metric-learning's `IntraPairVarianceLoss(pos_eps,
neg_eps)` with its CosineSimilarity and default mean reducer: with mu+ and
mu- the mean cosine of all positive and all negative pairs (gradients flow
through the means, as in PML), the mean over positive pairs of relu((1 -
pos_eps) mu+ - s)^2 plus the mean over negative pairs of relu(s - (1 +
neg_eps) mu-)^2; an empty side contributes 0.

One deliberate difference, as in multi_similarity.py: PML's GenericPairLoss
returns 0 when the batch has at most one positive and one negative pair in
total; here such a batch gets the formula's value.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity


def intra_pair_variance_loss(
    embeddings: jax.Array, labels: jax.Array, *, pos_eps: float = 0.01,
    neg_eps: float = 0.01, mask: jax.Array | None = None,
    ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Intra-pair variance loss of a labelled batch.

  Args:
    embeddings: (N, D); labels: (N,) integer class ids.
    pos_eps, neg_eps: the relative slack around each mean.
    mask: optional (N,) bool; False rows are padding, in no pair.
    ref_embeddings, ref_labels, ref_mask, self_index: optional reference set
      (see `metricjax.losses.pairs`).
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  s = similarity.cosine_similarity(x, y)
  mean_pos = pairs.masked_mean(s, pos)
  mean_neg = pairs.masked_mean(s, neg)
  pos_loss = jnp.square(jax.nn.relu((1.0 - pos_eps) * mean_pos - s))
  neg_loss = jnp.square(jax.nn.relu(s - (1.0 + neg_eps) * mean_neg))
  return pairs.masked_mean(pos_loss, pos) + pairs.masked_mean(neg_loss, neg)
