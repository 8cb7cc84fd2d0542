"""PNP loss (Li et al., "Rethinking the Optimization of Average Precision:
Only Penalizing Negative Instances before Positive Ones is Enough", AAAI
2022).

Same numbers as pytorch-metric-learning's `PNPLoss(b, alpha, anneal,
variant)` with its CosineSimilarity: for a query q and each of its positives
i (q itself included, as PML's I_pos), the smoothed count of negatives
ranked above i,

  R(q, i) = sum_{n neg of q} sigmoid((s_qn - s_qi) / anneal)

(PML's temperature sigmoid, its exponent clamped to [-50, 50]), is passed
through the variant's penalty: "O" R, "Ds" log(1 + R), "Dq" 1 / (1 + R)^alpha,
"Iu" (1 + R) log(1 + R), "Ib" (b R - log(1 + b R)) / b^2; the loss is the mean
over queries of the mean over their positives (1 minus it for "Dq", which
rewards).

PML forms the (N, N, N) tensor of every (q, i, n); here the queries are
walked a few at a time (rematerialised in the backward pass), so memory
stays O(N^2) while the work is the same O(N^3).

No miner, distance or reference set: PML's PNPLoss refuses an indices_tuple
and ref_emb and asserts CosineSimilarity. `mask` drops padded rows.
"""

import jax
import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.ops import similarity

VARIANTS = ("Ds", "Dq", "Iu", "Ib", "O")
QUERIES_PER_STEP = 4


def _penalty(r: jax.Array, variant: str, b: float, alpha: float) -> jax.Array:
  if variant == "Ds":
    return jnp.log1p(r)
  if variant == "Dq":
    return (1.0 + r) ** (-alpha)
  if variant == "Iu":
    return (1.0 + r) * jnp.log1p(r)
  if variant == "Ib":
    return (b * r - jnp.log1p(b * r)) / b ** 2
  return r


def pnp_loss(embeddings: jax.Array, labels: jax.Array, *, b: float = 2.0,
             alpha: float = 1.0, anneal: float = 0.01, variant: str = "O",
             mask: jax.Array | None = None) -> jax.Array:
  """PNP loss of a labelled batch.

  Args:
    embeddings: (N, D); labels: (N,) integer class ids.
    b: the "Ib" variant's slope; alpha: the "Dq" variant's exponent.
    anneal: the sigmoid's temperature.
    variant: "O" (PNP-O), "Ds", "Dq", "Iu" or "Ib" (PNP-D / PNP-I forms).
    mask: optional (N,) bool; False rows are padding.

  Returns:
    A float scalar.
  """
  if variant not in VARIANTS:
    raise UserError(f"pnp's variant={variant!r}: use one of "
                    f"{', '.join(VARIANTS)} (pytorch-metric-learning's).")
  n = embeddings.shape[0]
  valid = jnp.ones((n,), bool) if mask is None else mask
  x = embeddings if mask is None else jnp.where(mask[:, None], embeddings, 1.0)
  s = similarity.cosine_similarity(x)
  same = labels[:, None] == labels[None, :]
  both = valid[:, None] & valid[None, :]
  pos = same & both  # the query itself included, as PML's I_pos
  neg = ~same & both

  def one_query(args):
    row, pos_row, neg_row = args
    # [i, n]: does negative n outrank positive i (smoothly)?
    exponent = jnp.clip(-(row[None, :] - row[:, None]) / anneal, -50.0, 50.0)
    ahead = jnp.where(neg_row[None, :], 1.0 / (1.0 + jnp.exp(exponent)), 0.0)
    r = jnp.sum(ahead, axis=1)
    return jnp.sum(jnp.where(pos_row, _penalty(r, variant, b, alpha), 0.0))

  # A few queries a step, rematerialised in the backward pass: O(N^2)
  # memory, forward and backward.
  totals = jax.lax.map(jax.checkpoint(one_query), (s, pos, neg),
                       batch_size=min(n, QUERIES_PER_STEP))
  num_pos = jnp.sum(pos, axis=1)
  per_query = totals / jnp.maximum(num_pos, 1).astype(s.dtype)
  has_pos = num_pos > 0  # every valid query: it is its own positive
  loss = (jnp.sum(jnp.where(has_pos, per_query, 0.0))
          / jnp.maximum(jnp.sum(has_pos), 1).astype(s.dtype))
  if variant == "Dq":  # PML's zero loss for an empty batch, not 1 - 0
    return jnp.where(jnp.any(has_pos), 1.0 - loss, 0.0)
  return loss
