"""Smooth-AP (Brown et al., ECCV 2020), pytorch-metric-learning's form.

PML's `SmoothAPLoss(temperature)`: each row q ranks the batch by cosine
similarity, with the rank of row k smoothed to 1 + sum_{j != k}
sigmoid((s_qj - s_qk) / temperature) over the batch (R_all) and over q's
class (R_pos); AP_q = mean over q's class of R_pos / R_all, q itself
included as PML's (and the original code's) does, and the loss is the mean
of 1 - AP_q. Rows are walked a few at a time: O(N^2) memory, where PML forms
(N, N, N) tensors.

Deliberate differences from PML:
- PML needs every class of the batch to have the same number of rows (it
  raises a ValueError otherwise, which is mirrored here where the labels are
  concrete, i.e. outside jit; under jit labels are not known while
  tracing) and then reads the classes from the row order: consecutive
  blocks of N / (N / P) rows, P the number of classes. Those blocks are the
  classes only when the batch is P contiguous classes of P rows each;
  otherwise PML mixes classes. Here q's class is the rows with q's label,
  in any order and with any count per class (AP_q divides by q's class
  size): PML's numbers wherever PML's blocks are the classes.
- PML returns its AP in float32 whatever the input dtype.

No reference set (PML raises on `ref_emb`). `mask` drops padded rows: in no
rank, no class and not in the mean.
"""

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.losses import miners as miners_lib
from metricjax.losses import pairs
from metricjax.ops import similarity


def check_layout(labels, mask=None) -> None:
  """PML's check: the same number of rows in every class of the batch (a
  ValueError otherwise). Only concrete labels can be checked; under jit
  this is a no-op."""
  if isinstance(labels, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
    return
  labels = np.asarray(labels)
  if mask is not None:
    labels = labels[np.asarray(mask)]
  _, counts = np.unique(labels, return_counts=True)
  if len(set(counts.tolist())) > 1:
    raise ValueError(
        "smooth_ap: all classes must have the same number of rows in the "
        f"batch (pytorch-metric-learning's SmoothAPLoss checks it); got "
        f"{sorted(counts.tolist())}. Sample batches as P classes x K rows "
        "(config.sampler='balanced').")


def smooth_ap_per_row(embeddings: jax.Array, labels: jax.Array, *,
                      temperature: float = 0.01,
                      mask: jax.Array | None = None):
  """(per-row 1 - AP, rows that count)."""
  check_layout(labels, mask)
  n = embeddings.shape[0]
  x, _ = pairs.drop_padding(embeddings, labels, mask)
  valid = jnp.ones((n,), bool) if mask is None else mask
  sims = similarity.cosine_similarity(x)
  same = (labels[:, None] == labels[None, :]) & valid[None, :] & valid[:, None]
  # [k, j]: j != k, j a real row (PML's 1 - eye; q itself is a j).
  others = valid[None, :] & ~jnp.eye(n, dtype=bool)

  def one_query(args):
    row, pos = args
    # [k, j] = sigmoid((s_qj - s_qk) / temperature)
    sig = jnp.where(others, jax.nn.sigmoid(
        (row[None, :] - row[:, None]) / temperature), 0.0)
    rank_all = 1.0 + jnp.sum(sig, axis=1)
    rank_pos = 1.0 + jnp.sum(jnp.where(pos[None, :], sig, 0.0), axis=1)
    ratio = jnp.where(pos, rank_pos / rank_all, 0.0)
    return jnp.sum(ratio) / jnp.maximum(jnp.sum(pos), 1).astype(row.dtype)
  # Rematerialised: the backward pass keeps no (N, N, N) residuals either.
  ap = miners_lib.walk_anchors(jax.checkpoint(one_query), (sims, same), n)
  return jnp.where(valid, 1.0 - ap, 0.0), valid


def smooth_ap_loss(embeddings: jax.Array, labels: jax.Array, *,
                   temperature: float = 0.01,
                   mask: jax.Array | None = None) -> jax.Array:
  """Mean 1 - smoothed AP of every row against the batch.

  Args:
    embeddings: (N, D); labels: (N,).
    temperature: the sigmoid's temperature (smaller: closer to the true
      ranks).
    mask: optional (N,) bool; False rows are padding.
  """
  return pairs.masked_mean(*smooth_ap_per_row(
      embeddings, labels, temperature=temperature, mask=mask))
