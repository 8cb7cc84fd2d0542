"""Pairwise similarities, distances and label masks shared by the pair losses."""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps), the same guard as torch.nn.functional.normalize."""
  # Clamping before the sqrt gives the same values and keeps the gradient at
  # x = 0 (zero padding rows) finite: sqrt'(0) = inf would make it NaN.
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, eps * eps))


def safe_sqrt(sq: jax.Array) -> jax.Array:
  """sqrt with a zero (not NaN) gradient at 0: distances of duplicates."""
  positive = sq > 0.0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def cosine_similarity(x: jax.Array, y: jax.Array | None = None) -> jax.Array:
  """(N, M) cosine similarities of the rows of x and y (y defaults to x)."""
  x = l2_normalize(x)
  y = x if y is None else l2_normalize(y)
  return x @ y.T


def pairwise_distance(x: jax.Array, y: jax.Array | None = None, *,
                      kind: str = "euclidean") -> jax.Array:
  """(N, M) distances between rows: euclidean, squared_euclidean or cosine.

  "cosine" is 1 - cos. The euclidean form is computed from the squared one
  with a safe sqrt: the gradient at a zero distance (an anchor paired with
  itself, or duplicates) is 0 instead of NaN.
  """
  y = x if y is None else y
  if kind == "cosine":
    return 1.0 - cosine_similarity(x, y)
  sq = (jnp.sum(jnp.square(x), -1)[:, None] + jnp.sum(jnp.square(y), -1)[None, :]
        - 2.0 * x @ y.T)
  sq = jnp.maximum(sq, 0.0)
  if kind == "squared_euclidean":
    return sq
  if kind == "euclidean":
    return safe_sqrt(sq)
  raise ValueError(f"unknown distance {kind!r}; expected euclidean, "
                   "squared_euclidean or cosine")


def label_masks(labels: jax.Array, ref_labels: jax.Array | None = None,
                mask: jax.Array | None = None,
                ref_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Boolean (N, M) masks of positive and negative pairs.

  With no ref_labels the batch is compared with itself and the diagonal is
  not a positive. Rows or columns dropped by mask/ref_mask are in neither.
  """
  self_compare = ref_labels is None
  if self_compare:
    ref_labels, ref_mask = labels, mask
  same = labels[:, None] == ref_labels[None, :]
  valid = jnp.ones(same.shape, bool)
  if mask is not None:
    valid &= mask[:, None]
  if ref_mask is not None:
    valid &= ref_mask[None, :]
  pos = same & valid
  if self_compare:
    pos &= ~jnp.eye(same.shape[0], dtype=bool)
  neg = ~same & valid
  return pos, neg


def rowwise_distance(x: jax.Array, y: jax.Array, *, kind: str = "euclidean") -> jax.Array:
  """(N,) distances between row i of x and row i of y (euclidean with the
  same safe sqrt as `pairwise_distance`, or squared_euclidean)."""
  sq = jnp.sum(jnp.square(x - y), axis=-1)
  if kind == "squared_euclidean":
    return sq
  if kind == "euclidean":
    return safe_sqrt(sq)
  raise ValueError(f"unknown distance {kind!r}; expected euclidean or "
                   "squared_euclidean")
