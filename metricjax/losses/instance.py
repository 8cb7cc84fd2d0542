"""Instance loss (Zheng et al., "Dual-Path Convolutional Image-Text
Embeddings with Instance Loss", ACM TOMM 2020).

Same numbers as pytorch-metric-learning's `InstanceLoss(gamma)` with its
CosineSimilarity and default MeanReducer: the batch's (N, N) cosine matrix
times gamma is read as N-way logits, and row i's target column is the rank of
its label among the batch's distinct labels (PML's `torch.unique(labels,
return_inverse=True)`; that rank indexes a column of the batch, not a
class); the loss is the mean cross entropy over the rows. Without labels
every row is its own instance (target column i). (The paper classifies
instance ids with a learned layer; PML, and so this, uses the batch itself
as the classifier.)

No miner, distance or reference set: PML's InstanceLoss refuses an
indices_tuple and ref_emb and asserts CosineSimilarity. PML takes another
reducer for the per-row losses; this one is the mean (its default). `mask` drops padded
rows: the ranks and columns are those of the valid rows alone, as PML on the
unpadded batch.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity


def instance_loss(embeddings: jax.Array, labels: jax.Array | None = None, *,
                  gamma: float = 64.0,
                  mask: jax.Array | None = None) -> jax.Array:
  """Instance loss of a batch.

  Args:
    embeddings: (N, D).
    labels: (N,) integer ids, or None (each row its own instance).
    gamma: scales the cosine similarities into logits.
    mask: optional (N,) bool; False rows are padding.

  Returns:
    A float scalar.
  """
  n = embeddings.shape[0]
  valid = jnp.ones((n,), bool) if mask is None else mask
  # A constant padding row normalises to a finite vector; where() keeps its
  # gradient exactly 0 even if it held NaN.
  x = embeddings if mask is None else jnp.where(mask[:, None], embeddings, 1.0)
  logits = gamma * similarity.cosine_similarity(x)
  # Column j's position among the valid columns.
  column_rank = jnp.cumsum(valid) - 1
  if labels is None:
    target = column_rank
  else:
    same = labels[:, None] == labels[None, :]
    earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)  # [j, k]: k < j
    # Row j holds the first valid occurrence of its label.
    first = valid & ~jnp.any(same & earlier & valid[None, :], axis=1)
    # The number of distinct valid labels below label_i: unique's inverse.
    target = jnp.sum(first[None, :] & (labels[None, :] < labels[:, None]),
                     axis=1)
  onehot = valid[None, :] & (column_rank[None, :] == target[:, None])
  target_logit = jnp.sum(jnp.where(onehot, logits, 0.0), axis=1, keepdims=True)
  # -log softmax as softplus(logsumexp of the others minus the target):
  # exact in float32 when the target dominates (distinct labels).
  others = valid[None, :] & ~onehot
  lse = pairs.masked_logsumexp(logits - target_logit, others)
  nll = jnp.where(jnp.any(others, axis=1), jax.nn.softplus(lse), 0.0)
  return pairs.masked_mean(nll, mask)
