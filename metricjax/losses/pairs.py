"""Anchor/reference plumbing shared by the pair and triplet losses.

Also the masked reductions the losses share (PML's logsumexp with a keep mask,
its MeanReducer and AvgNonZeroReducer over valid entries).

A pair loss compares N anchors (the batch) with M references. By default the
references are the batch itself and an anchor is never its own positive. An
explicit reference set (e.g. a cross-batch memory, `metricjax.losses.xbm`) is
passed as `ref_embeddings, ref_labels, ref_mask`, and `self_index` names, for
each anchor, the reference column that holds the same sample (-1: none), so
that pair is not a positive: pytorch-metric-learning's `ref_emb, ref_labels`
plus CrossBatchMemory's removal of self comparisons.
"""

import jax
import jax.numpy as jnp

from metricjax.ops import similarity

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def anchor_ref_pairs(
    embeddings: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
    ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Returns (anchors (N, D), refs (M, D), pos (N, M), neg (N, M)).

  Dropped rows are zeroed: padding may hold anything (even NaN), and where()
  keeps its gradient at exactly 0 instead of 0 * NaN.
  """
  if (ref_embeddings is None) != (ref_labels is None):
    raise ValueError("ref_embeddings and ref_labels go together")
  if mask is not None:
    embeddings = jnp.where(mask[:, None], embeddings, 0.0)
  if ref_embeddings is None:
    if ref_mask is not None or self_index is not None:
      raise ValueError("ref_mask and self_index need ref_embeddings")
    pos, neg = similarity.label_masks(labels, mask=mask)
    return embeddings, embeddings, pos, neg
  if ref_mask is not None:
    ref_embeddings = jnp.where(ref_mask[:, None], ref_embeddings, 0.0)
  pos, neg = similarity.label_masks(labels, ref_labels, mask, ref_mask)
  if self_index is not None:
    pos &= not_self(self_index, ref_embeddings.shape[0])
  return embeddings, ref_embeddings, pos, neg


def not_self(self_index: jax.Array, num_refs: int) -> jax.Array:
  """(N, M) bool, False at each anchor's own reference column."""
  return self_index[:, None] != jnp.arange(num_refs)[None, :]


def pair_matrix(x: jax.Array, y: jax.Array, *, distance: str,
                normalize: bool) -> tuple[jax.Array, bool]:
  """(N, M) pair matrix and whether it is a similarity (larger = closer).

  As in pytorch-metric-learning: "euclidean" is LpDistance, "squared_euclidean"
  LpDistance(power=2), both on L2-normalised rows when normalize; "cosine" is
  CosineSimilarity, a similarity that always normalises.
  """
  if distance not in DISTANCES:
    raise ValueError(f"unknown distance {distance!r}; expected one of "
                     f"{', '.join(DISTANCES)}")
  if distance == "cosine":
    return similarity.cosine_similarity(x, y), True
  if normalize:
    x, y = similarity.l2_normalize(x), similarity.l2_normalize(y)
  return similarity.pairwise_distance(x, y, kind=distance), False


def avg_nonzero(losses: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of the valid losses > 0, else 0 (PML's AvgNonZeroReducer)."""
  keep = valid & (losses > 0)
  total = jnp.sum(jnp.where(keep, losses, 0.0))
  return total / jnp.maximum(jnp.sum(keep), 1).astype(total.dtype)


def masked_mean(losses: jax.Array, valid: jax.Array | None) -> jax.Array:
  """Mean of the valid losses, 0 when there is none (PML's MeanReducer)."""
  if valid is None:
    return jnp.mean(losses)
  total = jnp.sum(jnp.where(valid, losses, 0.0))
  return total / jnp.maximum(jnp.sum(valid), 1).astype(total.dtype)


def masked_logsumexp(x: jax.Array, keep: jax.Array, axis: int = -1, *,
                     add_one: bool = False) -> jax.Array:
  """log(sum_{keep} exp(x)) [+ an extra exp(0) term] along axis; 0 where
  nothing is kept (PML's `lmu.logsumexp(x, keep_mask, add_one)`).

  Dropped entries are replaced before exp, so neither they nor their
  gradients can become inf or NaN; the max shift is constant (no gradient).
  """
  m = jnp.max(jnp.where(keep, x, -jnp.inf), axis=axis, keepdims=True)
  any_kept = jnp.any(keep, axis=axis, keepdims=True)
  m = jnp.where(any_kept, m, 0.0)
  if add_one:
    m = jnp.maximum(m, 0.0)  # the added 0 term
  m = jax.lax.stop_gradient(m)
  e = jnp.where(keep, jnp.exp(jnp.where(keep, x, m) - m), 0.0)
  total = jnp.sum(e, axis=axis, keepdims=True)
  if add_one:
    total = total + jnp.exp(-m)
  out = jnp.log(jnp.where(any_kept, total, 1.0)) + m
  return jnp.squeeze(jnp.where(any_kept, out, 0.0), axis)


def drop_padding(embeddings: jax.Array, labels: jax.Array,
                 mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Padded rows made harmless for the per-sample (proxy/softmax) losses.

  A constant row normalises to a finite vector, label 0 indexes any class
  table, and where() keeps the padded rows' gradients at exactly 0 even if
  they held NaN.
  """
  if mask is None:
    return embeddings, labels
  return (jnp.where(mask[:, None], embeddings, 1.0),
          jnp.where(mask, labels, 0))
