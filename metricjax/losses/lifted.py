"""Lifted structure losses: Song et al. (CVPR 2016) and the "generalized" form
of Hermans et al. (2017, p. 4).

Same numbers as pytorch-metric-learning's `LiftedStructureLoss(neg_margin,
pos_margin)` and `GeneralizedLiftedStructureLoss(neg_margin, pos_margin)`
with their default LpDistance (euclidean on L2-normalised rows) and
MeanReducer.

LiftedStructureLoss: for each positive pair (a, p),
relu(logsumexp_{n in N(a) u N(p)}(neg_margin - d) + d(a, p) - pos_margin)^2 / 2,
averaged over the positive pairs, where N(i) are the negative pairs of
anchor i. PML builds the (positive pairs x negative pairs) matrix, O(N^4);
here the union is logaddexp of two per-anchor logsumexps, O(N M). PML's quirk
with a reference set is reproduced because it defines the value: p is then a
reference index, and N(p) are the negatives of *batch* row p (none if p >= N).

GeneralizedLiftedStructureLoss: per anchor relu(logsumexp_p(d - pos_margin) +
logsumexp_n(neg_margin - d)) (an empty side contributes 0), averaged over all
the (valid) anchors.

One deliberate difference, as in multi_similarity.py: PML's GenericPairLoss
returns 0 when the batch has at most one positive and one negative pair in
total; here such a batch gets the formula's value.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs


def lifted_structure_loss(
    embeddings: jax.Array, labels: jax.Array, *, neg_margin: float = 1.0,
    pos_margin: float = 0.0, mask: jax.Array | None = None,
    ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Lifted structure loss (PML LiftedStructureLoss).

  Args:
    embeddings: (N, D); labels: (N,) integer class ids.
    neg_margin, pos_margin: the margins, in euclidean distance units.
    mask: optional (N,) bool; False rows are padding, in no pair.
    ref_embeddings, ref_labels, ref_mask, self_index: optional reference set
      (see `metricjax.losses.pairs` and the module docstring).
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  d, _ = pairs.pair_matrix(x, y, distance="euclidean", normalize=True)
  n, m = d.shape
  row_lse = pairs.masked_logsumexp(neg_margin - d, neg)  # (N,)
  row_has = jnp.any(neg, axis=1)
  # Column j of a pair names batch row j's negatives (PML's a2 == p), if any.
  if m <= n:
    col_lse, col_has = row_lse[:m], row_has[:m]
  else:
    col_lse = jnp.pad(row_lse, (0, m - n))
    col_has = jnp.pad(row_has, (0, m - n))
  cols = jnp.arange(m)[None, :]
  other = col_has[None, :] & (cols != jnp.arange(n)[:, None])
  a_lse, a_has = row_lse[:, None], row_has[:, None]
  union = jnp.where(
      a_has & other, jnp.logaddexp(a_lse, col_lse[None, :]),
      jnp.where(a_has, a_lse, jnp.where(other, col_lse[None, :], 0.0)))
  losses = jnp.square(jax.nn.relu(union + d - pos_margin)) / 2.0
  loss = pairs.masked_mean(losses, pos)
  return jnp.where(jnp.any(neg), loss, 0.0)


def generalized_lifted_structure_loss(
    embeddings: jax.Array, labels: jax.Array, *, neg_margin: float = 1.0,
    pos_margin: float = 0.0, mask: jax.Array | None = None,
    ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Generalized lifted structure loss (PML GeneralizedLiftedStructureLoss).

  Arguments as `lifted_structure_loss`; the mean is over the N anchors.
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  d, _ = pairs.pair_matrix(x, y, distance="euclidean", normalize=True)
  losses = jax.nn.relu(pairs.masked_logsumexp(d - pos_margin, pos)
                       + pairs.masked_logsumexp(neg_margin - d, neg))
  return pairs.masked_mean(losses, mask)
