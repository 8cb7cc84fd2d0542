"""Contrastive (Hadsell et al. 2006) and NT-Xent (SimCLR / InfoNCE) pair losses.

Same numbers as pytorch-metric-learning's ContrastiveLoss and NTXentLoss with
their default reducers. One deliberate difference, as in multi_similarity.py:
PML's GenericPairLoss returns 0 whenever there is at most one positive and at
most one negative pair in total (only possible with a reference set); here
such a batch gets the formula's value.
"""

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.losses import pairs
from metricjax.ops import similarity


def contrastive_loss(
    embeddings: jax.Array, labels: jax.Array, *, pos_margin: float = 0.0,
    neg_margin: float = 1.0, distance: str = "euclidean",
    normalize: bool = True, mask: jax.Array | None = None,
    ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Mean positive-pair loss plus mean negative-pair loss.

  With a distance d: relu(d - pos_margin) on positive pairs and relu(neg_margin
  - d) on negative ones; with distance="cosine" (a similarity s, as PML's
  CosineSimilarity): relu(pos_margin - s) and relu(s - neg_margin), so set
  e.g. pos_margin=1, neg_margin=0 there. Each term is averaged over its pairs
  with loss > 0 (PML's AvgNonZeroReducer on each sub-loss, then summed).

  Args:
    embeddings: (N, D).
    labels: (N,) integer class ids.
    pos_margin, neg_margin: the margins, in units of the distance.
    distance: "euclidean", "squared_euclidean" or "cosine" (a similarity).
    normalize: L2-normalise before the (squared) euclidean distance.
    mask: optional (N,) bool; False rows are padding, in no pair.
    ref_embeddings, ref_labels, ref_mask, self_index: optional reference set
      (see `metricjax.losses.pairs`).

  Returns:
    A float scalar.
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  mat, is_similarity = pairs.pair_matrix(x, y, distance=distance,
                                         normalize=normalize)
  sign = -1.0 if is_similarity else 1.0
  pos_loss = jax.nn.relu(sign * (mat - pos_margin))
  neg_loss = jax.nn.relu(sign * (neg_margin - mat))
  return pairs.avg_nonzero(pos_loss, pos) + pairs.avg_nonzero(neg_loss, neg)


def ntxent_loss(
    embeddings: jax.Array, labels: jax.Array, *, temperature: float = 0.07,
    mask: jax.Array | None = None, ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Normalised temperature-scaled cross entropy over every positive pair.

  With s = cos / temperature, each positive pair (a, p) scores
  -log(e^s(a,p) / (e^s(a,p) + sum_{n neg of a} e^s(a,n))); the loss is the
  plain mean over all positive pairs (PML's MeanReducer), pairs whose anchor
  has no negative counting as 0, and is 0 when the batch has no negative
  pair at all. Arguments as in `contrastive_loss`.
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  s = similarity.cosine_similarity(x, y) / temperature
  has_neg = jnp.any(neg, axis=1)
  top = jnp.max(jnp.where(neg, s, -jnp.inf), axis=1)
  top = jax.lax.stop_gradient(jnp.where(has_neg, top, 0.0))
  neg_sum = jnp.sum(jnp.where(neg, jnp.exp(s - top[:, None]), 0.0), axis=1)
  log_neg = jnp.log(jnp.where(has_neg, neg_sum, 1.0)) + top
  log_denominator = jnp.where(has_neg[:, None],
                              jnp.logaddexp(s, log_neg[:, None]), s)
  # PML takes log(ratio + tiny): this caps a pair's loss at ~87.3 in float32.
  log_tiny = float(np.log(np.finfo(np.dtype(s.dtype)).tiny))
  losses = -jnp.logaddexp(s - log_denominator, log_tiny)
  num_pos = jnp.maximum(jnp.sum(pos), 1).astype(s.dtype)
  loss = jnp.sum(jnp.where(pos, losses, 0.0)) / num_pos
  return jnp.where(jnp.any(neg), loss, 0.0)
