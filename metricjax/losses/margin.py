"""Margin loss (Wu et al., "Sampling matters", ICCV 2017).

Same numbers as pytorch-metric-learning's `MarginLoss(margin, nu, beta,
triplets_per_anchor="all", learn_beta, num_classes)` with its default
LpDistance (euclidean on L2-normalised rows) and DivisorReducer: over every
triplet (a, p, n), relu(d(a,p) - beta + margin) + relu(beta - d(a,n) +
margin), summed and divided by the number of those terms that are > 0; with
learn_beta, plus nu * beta (a global beta) or the sum of nu * beta[label(a)]
over the triplets over the same divisor (beta per class).

`beta` is PML's `MarginLoss.beta`: a float, a (1,) array (one global beta) or
a (num_classes,) array (per class, indexed by the anchor's label). Learn it by
passing it as an array and differentiating w.r.t. it; `init_margin_loss`
gives PML's initial value.

The triplet sums are per-anchor products of pair sums (a triplet's loss is a
positive-pair term plus a negative-pair term), so nothing is (N, M, M):
memory O(N M). PML's `triplets_per_anchor=<int>` (random triplet sampling)
is not reproduced; only "all".
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs


def init_margin_loss(rng: jax.Array, *, num_classes: int | None,
                     embedding_dim: int | None = None, beta: float = 1.2,
                     learn_beta: bool = True, **_) -> dict[str, jax.Array]:
  """PML's initial beta: beta per class, or one global one if num_classes is
  None (rng and embedding_dim unused: it is a constant); nothing to learn
  without learn_beta."""
  del rng, embedding_dim
  if not learn_beta:
    return {}
  shape = (num_classes,) if num_classes else (1,)
  return {"beta": jnp.full(shape, beta, jnp.float32)}


def margin_loss(
    embeddings: jax.Array, labels: jax.Array, *,
    beta: float | jax.Array = 1.2, margin: float = 0.2, nu: float = 0.0,
    learn_beta: bool = False, mask: jax.Array | None = None,
    ref_embeddings: jax.Array | None = None,
    ref_labels: jax.Array | None = None, ref_mask: jax.Array | None = None,
    self_index: jax.Array | None = None) -> jax.Array:
  """Margin loss of a labelled batch over all its triplets.

  Args:
    embeddings: (N, D); labels: (N,) ints (in [0, num_classes) for a beta
      per class).
    beta: the boundary, a float, (1,) or (num_classes,) array.
    margin: the margin around beta.
    nu: the weight of the beta regulariser, used only with learn_beta (PML).
    learn_beta: add the nu * beta regulariser (static).
    mask: optional (N,) bool; False rows are padding, in no triplet.
    ref_embeddings, ref_labels, ref_mask, self_index: optional reference set
      for positives and negatives (see `metricjax.losses.pairs`).
  """
  x, y, pos, neg = pairs.anchor_ref_pairs(
      embeddings, labels, mask, ref_embeddings, ref_labels, ref_mask,
      self_index)
  d, _ = pairs.pair_matrix(x, y, distance="euclidean", normalize=True)
  beta = jnp.reshape(jnp.asarray(beta, d.dtype), (-1,))
  if beta.shape[0] == 1:
    b = jnp.broadcast_to(beta[0], labels.shape)
  else:
    safe_labels = labels if mask is None else jnp.where(mask, labels, 0)
    b = beta[safe_labels]
  b = b[:, None]
  pos_loss = jnp.where(pos, jax.nn.relu(d - b + margin), 0.0)
  neg_loss = jnp.where(neg, jax.nn.relu(b - d + margin), 0.0)
  # Each positive pair is in num_neg(a) triplets, each negative in num_pos(a).
  num_pos = jnp.sum(pos, axis=1).astype(d.dtype)
  num_neg = jnp.sum(neg, axis=1).astype(d.dtype)
  total = jnp.sum(num_neg * jnp.sum(pos_loss, axis=1)
                  + num_pos * jnp.sum(neg_loss, axis=1))
  divisor = jnp.sum(num_neg * jnp.sum(pos_loss > 0, axis=1)
                    + num_pos * jnp.sum(neg_loss > 0, axis=1))
  safe_divisor = jnp.maximum(divisor, 1.0)
  loss = jnp.where(divisor > 0, total / safe_divisor, 0.0)
  triplets = num_pos * num_neg  # per anchor
  if learn_beta:
    if beta.shape[0] == 1:
      reg = nu * beta[0]
    else:
      reg = jnp.where(divisor > 0,
                      jnp.sum(triplets * nu * b[:, 0]) / safe_divisor, 0.0)
    loss = loss + reg
  return jnp.where(jnp.sum(triplets) > 0, loss, 0.0)
