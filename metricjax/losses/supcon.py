"""Supervised contrastive loss (Khosla et al., NeurIPS 2020).

Same numbers as pytorch-metric-learning's `SupConLoss(temperature)` with its
CosineSimilarity and default AvgNonZeroReducer: with s = cos / temperature,
per anchor -mean_{p pos} (s_p - logsumexp_{pos and neg} s), the mean over the
anchors with a loss > 0; 0 when the batch has no positive or no negative
pair at all. PML's shift by the row max cancels in s - logsumexp(s) and is
not reproduced.

One deliberate difference, as in multi_similarity.py: PML's GenericPairLoss
returns 0 when the batch has at most one positive and one negative pair in
total; here such a batch gets the formula's value.
"""

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.losses import pairs
from metricjax.ops import similarity


def supcon_loss(
    embeddings: jax.Array, labels: jax.Array, *, temperature: float = 0.1,
    mask: jax.Array | None = None, ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """SupCon loss of a labelled batch.

  Args:
    embeddings: (N, D); labels: (N,) integer class ids.
    temperature: divides the cosine similarities.
    mask: optional (N,) bool; False rows are padding, in no pair.
    ref_embeddings, ref_labels, ref_mask, self_index: optional reference set
      (see `metricjax.losses.pairs`).
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  s = similarity.cosine_similarity(x, y) / temperature
  log_prob = s - pairs.masked_logsumexp(s, pos | neg)[:, None]
  num_pos = jnp.sum(pos, axis=1).astype(s.dtype)
  # PML's + tiny: an anchor without positives gets 0, not 0 / 0.
  tiny = float(np.finfo(np.dtype(s.dtype)).tiny)
  losses = -jnp.sum(jnp.where(pos, log_prob, 0.0), axis=1) / (num_pos + tiny)
  loss = pairs.avg_nonzero(losses, jnp.any(pos, axis=1))
  return jnp.where(jnp.any(pos) & jnp.any(neg), loss, 0.0)
