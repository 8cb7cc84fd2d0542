"""Triplet margin loss over every, the hardest or the semi-hard batch triplets.

Same numbers as pytorch-metric-learning's `TripletMarginLoss(margin)` with its
default AvgNonZeroReducer: the mean of relu(d(a,p) - d(a,n) + margin) over the
triplets whose loss is > 0, 0 when there is none. Triplets come from
- "all": every (a, p, n) with label(p) = label(a) != label(n), p != a (the
  loss alone);
- "hard": per anchor its farthest positive and closest negative (Hermans et
  al.; PML's BatchHardMiner), anchors lacking either dropped;
- "semihard": every triplet with 0 < d(a,n) - d(a,p) <= margin (FaceNet;
  PML's TripletMarginMiner(margin, type_of_triplets="semihard")).
distance="cosine" is PML's CosineSimilarity, a similarity s: the loss is
relu(s(a,n) - s(a,p) + margin), i.e. d = -s below.

`mined_triplet_loss` is the mining + reduction on any (N, M) anchor-to-
reference dissimilarity, shared with the Shadow loss.
"""

import functools

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity

MININGS = ("all", "hard", "semihard")


def _batch_hard(d, pos, neg, margin):
  stop = jax.lax.stop_gradient(d)
  p = jnp.argmax(jnp.where(pos, stop, -jnp.inf), axis=1)
  n = jnp.argmin(jnp.where(neg, stop, jnp.inf), axis=1)
  d_ap = jnp.take_along_axis(d, p[:, None], axis=1)[:, 0]
  d_an = jnp.take_along_axis(d, n[:, None], axis=1)[:, 0]
  has_triplet = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
  return pairs.avg_nonzero(d_ap - d_an + margin, has_triplet)


def violation_sum_count(d, pos, neg, margin, semihard):
  """Sum and count of the positive triplet losses, in O(N M) memory.

  Per anchor the negatives' distances are sorted once; each positive p then
  violates with exactly the negatives in [lo, hi) of that order (hi: d < d_ap
  + margin; lo: d <= d_ap for semi-hard, else 0), so a prefix sum gives
  sum_n (d_ap + margin - d_an) without the (N, M, M) triplet tensor.
  """
  num_refs = d.shape[1]
  key = jax.lax.stop_gradient(jnp.where(neg, d, jnp.inf))
  order = jnp.argsort(key, axis=1)
  sorted_key = jnp.take_along_axis(key, order, axis=1)
  sorted_d = jnp.take_along_axis(d, order, axis=1)
  num_neg = jnp.sum(neg, axis=1)
  is_neg = jnp.arange(num_refs)[None, :] < num_neg[:, None]
  # Prefix sums of d - (the anchor's mean negative distance): smaller partial
  # sums, so less float32 cancellation in their differences. It cancels.
  shift = jax.lax.stop_gradient(
      jnp.sum(jnp.where(neg, d, 0.0), axis=1) / jnp.maximum(num_neg, 1))
  prefix = jnp.cumsum(jnp.where(is_neg, sorted_d - shift[:, None], 0.0), axis=1)
  prefix = jnp.pad(prefix, ((0, 0), (1, 0)))

  def search(queries, side):
    return jax.vmap(functools.partial(jnp.searchsorted, side=side))(
        sorted_key, queries)
  stop = jax.lax.stop_gradient(d)
  hi = search(stop + margin, "left")
  lo = search(stop, "right") if semihard else jnp.zeros_like(hi)
  count = jnp.where(pos, jnp.maximum(hi - lo, 0), 0)
  window = (jnp.take_along_axis(prefix, hi, axis=1)
            - jnp.take_along_axis(prefix, lo, axis=1))
  sums = count * (d + margin - shift[:, None]) - window
  total = jnp.sum(jnp.where(count > 0, sums, 0.0))
  # Per-row counts fit int32 (M^2); the grand total (N M^2) may not.
  return total, jnp.sum(jnp.sum(count, axis=1).astype(d.dtype))


def mined_triplet_loss(d: jax.Array, pos: jax.Array, neg: jax.Array, *,
                       margin: float, mining: str = "all") -> jax.Array:
  """AvgNonZero mean of relu(d[a,p] - d[a,n] + margin) over mined triplets.

  Args:
    d: (N, M) anchor-to-reference dissimilarity, larger = farther.
    pos, neg: (N, M) bool masks of the positive and negative pairs.
    margin: the margin, in units of d.
    mining: "all", "hard" or "semihard".

  Returns:
    A float scalar; 0 (with a zero gradient) when no triplet violates.
  """
  if mining == "hard":
    return _batch_hard(d, pos, neg, margin)
  if mining not in MININGS:
    raise ValueError(f"unknown mining {mining!r}; expected one of "
                     f"{', '.join(MININGS)}")
  total, count = violation_sum_count(d, pos, neg, margin,
                                      semihard=mining == "semihard")
  return total / jnp.maximum(count, 1.0)


def triplet_margin_loss(
    embeddings: jax.Array, labels: jax.Array, *, margin: float = 0.05,
    distance: str = "euclidean", mining: str = "all", normalize: bool = True,
    mask: jax.Array | None = None, ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Triplet margin loss of a labelled batch (PML TripletMarginLoss).

  Args:
    embeddings: (N, D).
    labels: (N,) integer class ids.
    margin: in units of the distance (of the similarity for "cosine").
    distance: "euclidean", "squared_euclidean" or "cosine" (a similarity).
    mining: "all", "hard" or "semihard"; see the module docstring.
    normalize: L2-normalise before the (squared) euclidean distance.
    mask: optional (N,) bool; False rows are padding, in no triplet.
    ref_embeddings, ref_labels, ref_mask, self_index: optional reference set
      for positives and negatives (anchors stay the batch); see
      `metricjax.losses.pairs`.

  Returns:
    A float scalar.
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  mat, is_similarity = pairs.pair_matrix(x, y, distance=distance,
                                         normalize=normalize)
  d = -mat if is_similarity else mat
  return mined_triplet_loss(d, pos, neg, margin=margin, mining=mining)


def triplet_loss(anchor: jax.Array, positive: jax.Array, negative: jax.Array,
                 *, margin: float = 0.05, distance: str = "euclidean",
                 normalize: bool = True) -> jax.Array:
  """Mean over T explicit triplets of relu(d(a, p) - d(a, n) + margin).

  The Siamese form (rows of anchor/positive/negative are the triplets), the
  peer of `shadow_loss`; both reduce with a plain mean. "cosine" is a
  similarity as above: relu(s(a, n) - s(a, p) + margin).
  """
  if normalize or distance == "cosine":
    anchor, positive, negative = (similarity.l2_normalize(v)
                                  for v in (anchor, positive, negative))
  if distance == "cosine":
    d_ap = -jnp.sum(anchor * positive, -1)
    d_an = -jnp.sum(anchor * negative, -1)
  else:
    d_ap, d_an = (similarity.rowwise_distance(anchor, v, kind=distance)
                  for v in (positive, negative))
  return jnp.mean(jax.nn.relu(d_ap - d_an + margin))
