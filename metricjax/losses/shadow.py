"""Shadow loss (Khan et al. 2023, arXiv 2311.14012): a triplet loss on the
scalar projections ("shadows") of the positive and negative onto the anchor.

  delta(a, x) = | ||a|| - a.x / ||a|| |,
  L = relu(delta(a, p) - delta(a, n) + margin).

On unit-norm inputs delta = 1 - cos(a, x) = ||a - x||^2 / 2, so Shadow with
margin m is exactly half the squared-euclidean triplet loss with margin 2m,
triplet for triplet and for every mining below. Without normalisation the
part of x orthogonal to a is ignored (p = a + 10 v, v _|_ a: delta = 0).

Default margin 0.1: by that identity it is FaceNet's alpha = 0.2 on squared
distances of unit-norm embeddings. The paper does not give its margin; a
third-party TF port uses 1.0, which on normalised inputs (delta in [0, 2])
keeps almost every triplet active, i.e. a nearly linear loss.

`shadow_loss` on explicit triplets is the paper's plain mean.
`shadow_margin_loss` builds the triplets of a labelled batch with the same
mining and AvgNonZero reduction as `triplet_margin_loss`, so the two differ
only in the pair term.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.losses import triplet
from metricjax.ops import similarity


def _norm_and_direction(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(||a||, a / ||a||) per row, both 0 with finite gradients at a = 0."""
  norm = similarity.safe_sqrt(jnp.sum(jnp.square(a), axis=-1))
  return norm, similarity.l2_normalize(a)


def shadow_distance(anchors: jax.Array, refs: jax.Array) -> jax.Array:
  """(N, M) delta(a_i, x_j) = | ||a_i|| - a_i.x_j / ||a_i|| |; not symmetric."""
  norm, direction = _norm_and_direction(anchors)
  return jnp.abs(norm[:, None] - direction @ refs.T)


def shadow_loss(anchor: jax.Array, positive: jax.Array, negative: jax.Array,
                *, margin: float = 0.1, normalize: bool = True) -> jax.Array:
  """Mean over the T triplets of relu(delta(a, p) - delta(a, n) + margin).

  Args:
    anchor, positive, negative: (T, D), row t is one triplet.
    margin: the margin, in units of delta.
    normalize: L2-normalise all three first (the paper's v2 setting).

  Returns:
    A float scalar.
  """
  if normalize:
    anchor, positive, negative = (similarity.l2_normalize(v)
                                  for v in (anchor, positive, negative))
  norm, direction = _norm_and_direction(anchor)
  d_ap = jnp.abs(norm - jnp.sum(direction * positive, axis=-1))
  d_an = jnp.abs(norm - jnp.sum(direction * negative, axis=-1))
  return jnp.mean(jax.nn.relu(d_ap - d_an + margin))


def shadow_margin_loss(
    embeddings: jax.Array, labels: jax.Array, *, margin: float = 0.1,
    mining: str = "all", normalize: bool = True,
    mask: jax.Array | None = None, ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Shadow loss over the triplets of a labelled batch.

  Triplets, mining ("all", "hard", "semihard") and the reduction (mean over
  the triplets with loss > 0) are those of `triplet_margin_loss`, with
  delta(a, x) as the distance. Arguments as there.
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  if normalize:
    x, y = similarity.l2_normalize(x), similarity.l2_normalize(y)
  d = shadow_distance(x, y)
  return triplet.mined_triplet_loss(d, pos, neg, margin=margin, mining=mining)
