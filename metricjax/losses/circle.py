"""Circle loss (Sun et al., CVPR 2020), pair form.

Same numbers as pytorch-metric-learning's `CircleLoss(m, gamma)` with its
CosineSimilarity and default AvgNonZeroReducer: per anchor
softplus(logsumexp_p(-gamma a_p (s_p - (1 - m))) + logsumexp_n(gamma a_n (s_n -
m))) with the self-paced weights a_p = relu(1 + m - s_p), a_n = relu(s_n + m)
held constant (PML detaches them), 0 for an anchor lacking a positive or a
negative; the mean over the anchors with a loss > 0.

One deliberate difference, as in multi_similarity.py: PML's GenericPairLoss
returns 0 when the batch has at most one positive and one negative pair in
total; here such a batch gets the formula's value.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity


def circle_loss(
    embeddings: jax.Array, labels: jax.Array, *, m: float = 0.4,
    gamma: float = 80.0, mask: jax.Array | None = None,
    ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Circle loss of a labelled batch on cosine similarities.

  Args:
    embeddings: (N, D); labels: (N,) integer class ids.
    m: the relaxation margin; gamma: the scale.
    mask: optional (N,) bool; False rows are padding, in no pair.
    ref_embeddings, ref_labels, ref_mask, self_index: optional reference set
      (see `metricjax.losses.pairs`).
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  s = similarity.cosine_similarity(x, y)
  weight = jax.lax.stop_gradient(s)
  logit_p = -gamma * jax.nn.relu(1.0 + m - weight) * (s - (1.0 - m))
  logit_n = gamma * jax.nn.relu(weight + m) * (s - m)
  lse = (pairs.masked_logsumexp(logit_p, pos)
         + pairs.masked_logsumexp(logit_n, neg))
  has_both = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
  losses = jnp.where(has_both, jax.nn.softplus(lse), 0.0)
  return pairs.avg_nonzero(losses, has_both)
