"""Histogram loss (Ustinova & Lempitsky 2016, arXiv:1611.00822), as
pytorch-metric-learning's HistogramLoss: the probability that a negative
pair is more similar than a positive one,

  sum_r p_neg(r) Phi_pos(r),  Phi_pos = cumsum(p_pos),

p_pos, p_neg the linearly interpolated histograms (nodes -1, -1 + delta,
..., 1, delta = 2 / n_bins) of the similarities of the distinct positive and
negative pairs of the miner's triplets (PML's convert_to_triplets, then
each pair once, (a, b) and (b, a) one pair with the value at [min, max]).
Built with `losses.build("histogram", ...)` (compose.py): any distance
(default CosineSimilarity), already reduced (PML ignores a reducer).

Deliberate differences from PML: a value outside [-1, 1) (a distance that is
not a similarity in [-1, 1]) indexes past PML's nodes, an IndexError there;
here it adds nothing to its histogram.
"""

import jax.numpy as jnp

from metricjax.losses import miners as miners_lib


def _delta(n_bins, delta) -> float:
  if delta is None:
    return 2.0 / (100 if n_bins is None else n_bins)
  return delta


def check_hyperparameters(hp) -> None:
  n_bins, delta = hp["n_bins"], hp["delta"]
  if n_bins is not None and delta is not None and delta != 2 / n_bins:
    raise ValueError(f"delta and n_bins must satisfy delta = 2 / n_bins "
                     f"(got delta={delta}, n_bins={n_bins}); give one")
  if n_bins is not None and (int(n_bins) != n_bins or n_bins < 1):
    raise ValueError(f"n_bins must be a positive whole number, not {n_bins}")
  if delta is not None and not 0 < delta <= 2:
    raise ValueError(f"delta must be in (0, 2], not {delta}")


def _density(values, keep, delta: float, nodes: int):
  """PML's compute_density: each kept value split between the two nodes
  around it, divided by how many were kept."""
  size = jnp.sum(keep)
  r = jnp.floor((values + 1.0) / delta)
  upper = (values + 1.0 - r * delta) / delta  # to node r + 1
  lower = ((r + 1.0) * delta - 1.0 - values) / delta  # to node r
  keep &= (r >= 0) & (r + 1 < nodes)
  r = jnp.where(keep, r, 0).astype(jnp.int32)
  density = (jnp.zeros(nodes, values.dtype)
             .at[r.ravel() + 1].add(jnp.where(keep, upper, 0.0).ravel())
             .at[r.ravel()].add(jnp.where(keep, lower, 0.0).ravel()))
  return density / jnp.maximum(size, 1)


def histogram_core(b, *, n_bins: int | None = None,
                   delta: float | None = None):
  """The loss (a scalar) of the cores.Batch b."""
  delta = _delta(n_bins, delta)
  nodes = round(1 + 2 / delta)
  pos_c, neg_c = miners_lib.pair_counts(b.triplets())
  upper = jnp.triu(jnp.ones(pos_c.shape, bool), k=1)
  ap = (pos_c > 0) | (pos_c > 0).T
  an = (neg_c > 0) | (neg_c > 0).T
  phi = jnp.cumsum(_density(b.mat, ap & upper, delta, nodes))
  p_neg = _density(b.mat, an & upper, delta, nodes)
  # No triplet: PML's zero loss.
  return jnp.where(jnp.any(pos_c > 0), jnp.sum(p_neg * phi), 0.0)
