"""FastAP (Cakir et al., CVPR 2019): average precision from distance
histograms.

Same numbers as pytorch-metric-learning's `FastAPLoss(num_bins)` with its
LpDistance(power=2) (squared euclidean of L2-normalised rows, in [0, 4]) and
default mean reducer: each pair is spread over the two nearest of num_bins + 1
evenly spaced bin centres by a triangular kernel; per anchor FastAP =
sum_b h+_b H+_b / H_b / N+ (h+ the positives' histogram, H+ and H the
cumulative positive and total ones, terms with h+_b H+_b = 0 or H_b = 0
dropped), and the loss is the mean of 1 - FastAP over the anchors with a
positive; 0 if no bin term survives in the whole batch.

PML materialises the (num_bins + 1, N, N) kernel; since a pair touches only
two bins, here its two weights are scatter-added into (N, num_bins + 2)
histograms: memory O(N^2). No reference set (PML raises on `ref_emb`).
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity


def fastap_loss(embeddings: jax.Array, labels: jax.Array, *,
                num_bins: int = 10,
                mask: jax.Array | None = None) -> jax.Array:
  """FastAP loss of a labelled batch: the mean of `fastap_per_row`."""
  return pairs.masked_mean(*fastap_per_row(embeddings, labels,
                                           num_bins=num_bins, mask=mask))


def fastap_per_row(embeddings: jax.Array, labels: jax.Array, *,
                   num_bins: int = 10, mask: jax.Array | None = None):
  """(per-row 1 - FastAP, rows that count: those with a positive, none
  when no histogram bin is safe, PML's zero loss).

  Args:
    embeddings: (N, D); labels: (N,) integer class ids.
    num_bins: histogram bins (static); num_bins + 1 centres on [0, 4].
    mask: optional (N,) bool; False rows are padding, in no pair.
  """
  x, _, pos, neg = pairs.anchor_ref_pairs(embeddings, labels, mask)
  x = similarity.l2_normalize(x)
  d2 = similarity.pairwise_distance(x, kind="squared_euclidean")
  n = d2.shape[0]
  width = num_bins + 2  # centres 0..num_bins, plus one overflow column
  t = d2 / (4.0 / num_bins)  # in bin units
  low = jnp.clip(jnp.floor(jax.lax.stop_gradient(t)), 0, num_bins)
  frac = t - low
  low = low.astype(jnp.int32)
  rows = jnp.broadcast_to(jnp.arange(n)[:, None], d2.shape)

  def histogram(keep):
    # relu(1 - |t - b|) is 1 - frac at b = low, frac at low + 1, else 0.
    flat = jnp.zeros((n * width,), d2.dtype)
    flat = flat.at[(rows * width + low).ravel()].add(
        jnp.where(keep, 1.0 - frac, 0.0).ravel())
    flat = flat.at[(rows * width + low + 1).ravel()].add(
        jnp.where(keep, frac, 0.0).ravel())
    return flat.reshape(n, width)[:, :num_bins + 1]

  pos_hist, neg_hist = histogram(pos), histogram(neg)
  h_pos = pos_hist * jnp.cumsum(pos_hist, axis=1)
  total = jnp.cumsum(pos_hist + neg_hist, axis=1)
  safe = (h_pos > 0) & (total > 0)
  fastap = jnp.sum(jnp.where(safe, h_pos / jnp.where(safe, total, 1.0), 0.0),
                   axis=1)
  num_pos = jnp.sum(pos, axis=1)
  has_pos = num_pos > 0
  losses = 1.0 - fastap / jnp.maximum(num_pos, 1).astype(d2.dtype)
  return losses, has_pos & jnp.any(safe)
