"""Multi-Similarity loss (Wang et al., CVPR 2019) with its pair miner.

Same numbers as pytorch-metric-learning's `MultiSimilarityLoss(alpha, beta,
base)` fed the pairs of `MultiSimilarityMiner(epsilon)`, both on their default
CosineSimilarity, reduced by the default MeanReducer: the mean over every
anchor of the batch, an anchor without mined pairs adding 0.

With a reference set (`ref_embeddings, ref_labels`, see
`metricjax.losses.pairs`) the anchors stay the batch and the pairs go to the
references, as PML's `ref_emb, ref_labels` given to both the loss and the
miner. `self_index` (a cross-batch memory's own slots) removes each anchor's
pair with itself after mining, as CrossBatchMemory(miner=...) does: PML's
miner still sees that pair as a positive (it can set the least similar
positive), and so does this one.

One deliberate difference: PML's GenericPairLoss returns exactly 0 whenever
the batch has at most one positive and at most one negative pair in total (it
tests `len(indices) <= 1` where it means "empty"); here such a batch gets the
formula's value.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity


def _log1p_sum_exp(x: jax.Array, keep: jax.Array) -> jax.Array:
  """Row-wise log(1 + sum_{keep} exp(x)), stable for large x; 0 on empty rows.

  PML's `lmu.logsumexp(..., add_one=True)`: a logsumexp with an extra 0
  term. Dropped entries are replaced before exp so neither they nor their
  gradients can become inf or NaN.
  """
  m = jnp.max(jnp.where(keep, x, -jnp.inf), axis=-1, keepdims=True)
  m = jax.lax.stop_gradient(jnp.maximum(m, 0.0))  # the added 0 term
  e = jnp.where(keep, jnp.exp(jnp.where(keep, x, m) - m), 0.0)
  return jnp.log(jnp.exp(-m[:, 0]) + jnp.sum(e, axis=-1)) + m[:, 0]


def mine_pairs(sim: jax.Array, pos: jax.Array, neg: jax.Array,
               epsilon: float) -> tuple[jax.Array, jax.Array]:
  """MultiSimilarityMiner: the hard subsets of the (N, M) pos/neg masks.

  A positive is kept if it is less similar than the anchor's most similar
  negative plus epsilon; a negative if it is more similar than the anchor's
  least similar positive minus epsilon. Strict inequalities, as in PML.
  """
  sim = jax.lax.stop_gradient(sim)
  max_neg = jnp.max(jnp.where(neg, sim, -jnp.inf), axis=1, keepdims=True)
  min_pos = jnp.min(jnp.where(pos, sim, jnp.inf), axis=1, keepdims=True)
  # Written as PML writes them so float32 rounding at the threshold agrees.
  hard_pos = pos & (sim - epsilon < max_neg)
  hard_neg = neg & (sim + epsilon > min_pos)
  return hard_pos, hard_neg


def multi_similarity_loss(embeddings: jax.Array, labels: jax.Array, *,
                          alpha: float = 2.0, beta: float = 50.0,
                          base: float = 0.5, epsilon: float | None = 0.1,
                          mask: jax.Array | None = None,
                          ref_embeddings: jax.Array | None = None,
                          ref_labels: jax.Array | None = None,
                          ref_mask: jax.Array | None = None,
                          self_index: jax.Array | None = None) -> jax.Array:
  """Mean over valid anchors of the MS loss on cosine similarities.

  Args:
    embeddings: (N, D), normalised here.
    labels: (N,) integer class ids.
    alpha, beta, base: the loss's positive scale, negative scale and margin.
    epsilon: the miner's margin; None uses every pair (no mining).
    mask: optional (N,) bool; False rows are padding, dropped as anchors and
      as pairs, and not counted in the mean.
    ref_embeddings, ref_labels, ref_mask, self_index: optional reference set
      (see `metricjax.losses.pairs`); the mean stays over the N anchors.

  Returns:
    A float scalar.
  """
  if mask is not None:
    # Padding may hold anything (NaN, a row whose norm overflows): that would
    # put NaN in the gradients through 0 * inf. A constant row cannot, and
    # where() keeps the padded rows' gradients at exactly 0.
    embeddings = jnp.where(mask[:, None], embeddings, 1.0)
  if ref_mask is not None and ref_embeddings is not None:
    ref_embeddings = jnp.where(ref_mask[:, None], ref_embeddings, 1.0)
  # self_index is applied after mining: see the module docstring.
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask)
  # Without references, one normalisation serves both sides (as before
  # references existed: the same gradient, bit for bit).
  sim = similarity.cosine_similarity(x, None if ref_embeddings is None else y)
  if epsilon is not None:
    pos, neg = mine_pairs(sim, pos, neg, epsilon)
  if self_index is not None:
    pos &= pairs.not_self(self_index, y.shape[0])
  pos_loss = _log1p_sum_exp(-alpha * (sim - base), pos) / alpha
  neg_loss = _log1p_sum_exp(beta * (sim - base), neg) / beta
  losses = pos_loss + neg_loss
  if mask is None:
    return jnp.mean(losses)
  losses = jnp.where(mask, losses, 0.0)
  return jnp.sum(losses) / jnp.maximum(jnp.sum(mask), 1)
