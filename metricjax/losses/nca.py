"""NCA (Goldberger et al., NIPS 2004), pytorch-metric-learning's form.

Same numbers as PML's `NCALoss(softmax_scale)` with its default distance,
LpDistance(power=2) (squared euclidean on L2-normalised rows): for each row,
-log of the softmax mass (logits softmax_scale x similarity, the other rows
of the batch) on its own class, averaged over the rows whose mass is not 0
(PML drops a row without a positive, or whose mass underflows, from the
mean). `nca_per_row` takes any `distances.Distance` (PML's `distance=`) and
returns the unreduced losses, for `build` (compose.py) to weight by a miner
and reduce.

No reference set here (PML's `ref_emb` is optional). `mask` drops padded
rows: they are no row's neighbour and not in the mean.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import distances as distances_lib
from metricjax.losses import pairs


def nca_per_row(embeddings: jax.Array, labels: jax.Array, *,
                softmax_scale: float = 1.0, mask: jax.Array | None = None,
                distance: distances_lib.Distance | None = None):
  """(per-row losses, rows that count); distance: a Distance, by default
  PML's LpDistance(power=2)."""
  d = distances_lib.lp(power=2) if distance is None else distance
  n, dim = embeddings.shape
  valid = jnp.ones((n,), bool) if mask is None else mask
  # Padding may hold anything: a fixed non-constant row keeps every distance
  # (an SNR's variance too) finite.
  x = jnp.where(valid[:, None], embeddings,
                jnp.arange(1, dim + 1, dtype=embeddings.dtype))
  mat = d.fn(x, x)
  logits = softmax_scale * (mat if d.is_inverted else -mat)
  others = valid[None, :] & ~jnp.eye(n, dtype=bool)  # PML's -inf diagonal
  same = others & (labels[:, None] == labels[None, :])
  log_mass = (pairs.masked_logsumexp(logits, same)
              - pairs.masked_logsumexp(logits, others))
  counted = (valid & jnp.any(same, axis=1)
             & (jnp.exp(jax.lax.stop_gradient(log_mass)) != 0))
  return jnp.where(counted, -log_mass, 0.0), counted


def nca_loss(embeddings: jax.Array, labels: jax.Array, *,
             softmax_scale: float = 1.0,
             mask: jax.Array | None = None) -> jax.Array:
  """NCA loss of a labelled batch (PML's NCALoss with its defaults).

  Args:
    embeddings: (N, D); labels: (N,).
    softmax_scale: multiplies the logits (-squared distances).
    mask: optional (N,) bool; False rows are padding.
  """
  return pairs.masked_mean(*nca_per_row(embeddings, labels,
                                        softmax_scale=softmax_scale,
                                        mask=mask))
