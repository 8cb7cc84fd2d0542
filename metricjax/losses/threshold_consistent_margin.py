"""Threshold-consistent margin loss (Zhang et al. 2023, arXiv:2307.04047),
as pytorch-metric-learning's ThresholdConsistentMarginLoss:

  lambda_plus  mean_{pos pairs, s <= margin_plus} (margin_plus - s)
  + lambda_minus mean_{neg pairs, s >= margin_minus} (s - margin_minus),

s the cosine similarity of the miner's pairs (PML's convert_to_pairs: a
pair listed k times counts k times), each mean 0 when nothing is kept.
Built with `losses.build("threshold_consistent_margin", ...)` (compose.py):
CosineSimilarity only (PML asserts it, then computes the cosine itself),
already reduced (PML ignores a reducer).

Deliberate differences from PML: s is the CosineSimilarity (rows divided by
max(|x|, 1e-12)); PML's F.cosine_similarity guards the norms with 1e-8, so
the two differ only for rows of norm below 1e-8.
"""

import jax.numpy as jnp


def _mean_where(values, weights, keep):
  w = jnp.where(keep, weights, 0.0)
  count = jnp.sum(w)
  return jnp.where(count > 0, jnp.sum(jnp.where(keep, values * w, 0.0))
                   / jnp.maximum(count, 1.0), 0.0)


def threshold_consistent_margin_core(b, *, lambda_plus: float = 1.0,
                                     lambda_minus: float = 1.0,
                                     margin_plus: float = 0.9,
                                     margin_minus: float = 0.5):
  """The loss (a scalar) of the cores.Batch b."""
  pos_w, neg_w = b.pair_weights()
  s = b.mat
  pos = _mean_where(margin_plus - s, pos_w, (pos_w > 0) & (s <= margin_plus))
  neg = _mean_where(s - margin_minus, neg_w, (neg_w > 0) & (s >= margin_minus))
  return lambda_plus * pos + lambda_minus * neg
