"""Dynamic soft margin loss (Zhang & Rusinkiewicz 2019, "Learning local
descriptors with a CDF-based dynamic soft margin"), as pytorch-metric-
learning's DynamicSoftMarginLoss with labels: over the miner's triplets
(PML's convert_to_triplets, all of them), x = d(a, p) - d(a, n) and

  mean_t CDF(x_t) x_t,

CDF the cumulative sum of the normalised histogram of the x (num_bins bins
of width delta = 2 |min_val| / num_bins from min_val, each x split linearly
between its bin and the next). The histogram is differentiated through, as
PML's. Built with `losses.build("dynamic_soft_margin", ...)` (compose.py):
LpDistance(p=2, normalised) only, as PML asserts; already reduced (PML
ignores a reducer). The triplets are walked anchor by anchor, (M, M) at a
time: O(N M) memory.

Deliberate differences from PML:
- Stateless: every call is a fresh PML loss's first call (its histogram is
  this batch's). PML keeps `hist_` between calls, blended with `momentum`,
  but keeps it attached to the previous batch's graph, so a second call's
  backward raises "Trying to backward through the graph a second time"
  (PML 2.9, checked): the first call is the one PML trains with. momentum
  is accepted (PML's keyword) and has no effect.
- An x outside [min_val, min_val + (num_bins - 1) delta) indexes past PML's
  histogram (an IndexError there); here its share outside the histogram is
  dropped and its CDF is the nearest bin's.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import miners as miners_lib


def check_hyperparameters(hp) -> None:
  if int(hp["num_bins"]) < 1 or hp["min_val"] == 0:
    raise ValueError("num_bins must be >= 1 and min_val non-zero (the bins "
                     "are 2 |min_val| / num_bins wide)")


def dynamic_soft_margin_core(b, *, min_val: float = -2.0, num_bins: int = 10,
                             momentum: float = 0.01):
  """The loss (a scalar) of the cores.Batch b."""
  del momentum  # stateless: see the module docstring
  num_bins = int(num_bins)
  delta = 2 * abs(min_val) / num_bins
  t = b.triplets()

  def tile(args):
    a, row, p, n = args
    x = row[:, None] - row[None, :]  # [p, n]: d(a, p) - d(a, n)
    u = (x - min_val) / delta
    idx = jnp.floor(u)
    return x, idx, u - idx, miners_lib.tile(t, a, p, n)

  def histogram(args):
    _, idx, frac, w = tile(args)
    hist = jnp.zeros(num_bins, w.dtype)
    for shift, share in ((0, 1.0 - frac), (1, frac)):
      at = idx + shift
      inside = (at >= 0) & (at < num_bins)
      hist = hist.at[jnp.where(inside, at, 0).astype(jnp.int32).ravel()].add(
          jnp.where(inside, w * share, 0.0).ravel())
    return hist, jnp.sum(w)

  def weighted(cdf, args):
    x, idx, _, w = tile(args)
    bin_ = jnp.clip(idx, 0, num_bins - 1).astype(jnp.int32)
    return jnp.sum(w * cdf[bin_] * x)

  xs = (jnp.arange(b.mat.shape[0]), b.mat, t.pos, t.neg)
  num_refs = b.mat.shape[1]
  hists, counts = miners_lib.walk_anchors(jax.checkpoint(histogram), xs,
                                          num_refs)
  hist = jnp.sum(hists, axis=0)
  cdf = jnp.cumsum(hist / jnp.where(jnp.sum(hist) > 0, jnp.sum(hist), 1.0))
  totals = miners_lib.walk_anchors(
      jax.checkpoint(lambda args: weighted(cdf, args)), xs, num_refs)
  count = jnp.sum(counts)
  # No triplet: PML's zero loss.
  return jnp.where(count > 0, jnp.sum(totals) / jnp.maximum(count, 1.0), 0.0)
