"""Ranked List Loss (Wang et al., CVPR 2019).

Same numbers as pytorch-metric-learning's `RankedListLoss(margin, Tn,
imbalance, alpha, Tp)` with its LpDistance (euclidean of L2-normalised rows)
and default MeanReducer. With d the distances and b = alpha - margin, per
anchor the positives farther than b and the negatives nearer than alpha
(and not at distance 0, as PML selects them by a nonzero value) are weighted
w_p = exp(Tp (d - b)), w_n = exp(Tn (alpha - d)) (the weights keep their
gradient, as PML's), and

  L_P = sum_p w_p (d_p - b) / (sum_p w_p + 1e-5 N),
  L_N = sum_n w_n (alpha - d_n) / (sum_n w_n + 1e-5 N),
  loss = (1 - imbalance) L_P + imbalance L_N,

averaged over the N anchors (1e-5 N: PML adds 1e-5 to each of the row's N
weights, chosen or not). alpha defaults to 1 + margin / 2.

No miner, distance or reference set: PML's RankedListLoss refuses an
indices_tuple and ref_emb. `mask` drops padded rows (N counts valid rows).

Deliberate differences from PML:
- PML requires margin and Tn; here they default to the authors' In-Shop
  setting, margin=0.4 (so alpha = 1.2) and Tn=10;
- PML takes another distance or reducer; this keeps the defaults (build
  refuses the pieces).
"""

import jax
import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.losses import distances as distances_lib
from metricjax.losses import pairs


def ranked_list_loss(embeddings: jax.Array, labels: jax.Array, *,
                     margin: float = 0.4, Tn: float = 10.0,
                     imbalance: float = 0.5, alpha: float | None = None,
                     Tp: float = 0.0,
                     mask: jax.Array | None = None) -> jax.Array:
  """Ranked List Loss of a labelled batch.

  Args:
    embeddings: (N, D); labels: (N,) integer class ids.
    margin: the gap between the positive and negative boundaries.
    Tn, Tp: temperatures of the negative and positive weights.
    imbalance: in [0, 1], the weight of the negative term.
    alpha: the negative boundary; None is 1 + margin / 2.
    mask: optional (N,) bool; False rows are padding, in no pair.

  Returns:
    A float scalar.
  """
  if not 0.0 <= imbalance <= 1.0:
    raise UserError(f"ranked_list's imbalance must be in [0, 1], not "
                    f"{imbalance} (pytorch-metric-learning asserts it).")
  alpha = 1.0 + margin / 2.0 if alpha is None else alpha
  x, _, pos, neg = pairs.anchor_ref_pairs(embeddings, labels, mask)
  if mask is not None:  # a constant row normalises to a finite vector
    x = jnp.where(mask[:, None], x, 1.0)
  n = x.shape[0]
  d = distances_lib.lp().fn(x, x) * (1.0 - jnp.eye(n, dtype=x.dtype))
  b = alpha - margin
  take_p = pos & (d > b) & (d > 0)
  take_n = neg & (d < alpha) & (d > 0)
  # Unchosen pairs' exponents are replaced first: no overflow, no NaN grad.
  w_p = jnp.where(take_p, jnp.exp(Tp * (jnp.where(take_p, d, b) - b)), 0.0)
  w_n = jnp.where(take_n, jnp.exp(Tn * (alpha - jnp.where(take_n, d, alpha))),
                  0.0)
  count = 1e-5 * jnp.asarray(n if mask is None else jnp.sum(mask), x.dtype)
  loss_p = jnp.sum(w_p * (d - b), axis=1) / (jnp.sum(w_p, axis=1) + count)
  loss_n = jnp.sum(w_n * (alpha - d), axis=1) / (jnp.sum(w_n, axis=1) + count)
  return pairs.masked_mean((1.0 - imbalance) * loss_p + imbalance * loss_n,
                           mask)
