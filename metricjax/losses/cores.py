"""The composable losses' cores: what `build` (compose.py) runs on one
(N, M) distance matrix, and the table (COMPOSABLE) of their PML defaults.

A composable loss is its per-element / per-pair / per-triplet values on one
(N, M) distance matrix (the `_core` functions below), which compose.py
reduces per sub-loss (contrastive's pos_loss and neg_loss) and sums, as
PML's MultipleReducers. Mined tuples arrive as masks (miners.py): a pair
loss gets each pair's multiplicity in PML's index lists, a triplet loss
walks the anchors (`triplet_margin`). The losses that are not one formula
per pair (angular, npairs, histogram, ...: their own files) take the whole
`Batch` and the miner's raw output instead (`takes_batch`), and some reduce
their losses themselves, as PML's "already_reduced" ones
(`reduces_itself`: build refuses a reducer there).

Apart from compose.py, whose entry checks and binds the pieces, so that the
formulas and what PML fixes about each loss (its default distance and
reducer, the distance it asserts) read in one place; WHY_NO_PIECES says why
the REGISTRY losses outside the table take no pieces.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.losses import angular as angular_lib
from metricjax.losses import distances as distances_lib
from metricjax.losses import dynamic_soft_margin as dsm_lib
from metricjax.losses import histogram as histogram_lib
from metricjax.losses import miners as miners_lib
from metricjax.losses import npairs as npairs_lib
from metricjax.losses import pairs
from metricjax.losses import reducers as reducers_lib
from metricjax.losses import threshold_consistent_margin as tcm_lib
from metricjax.losses import triplet as triplet_lib
from metricjax.losses.distances import Distance, margin
from metricjax.ops import similarity


def _wlse(x: jax.Array, weights: jax.Array) -> jax.Array:
  """Row-wise log(sum_j w_j exp(x_j)) over w > 0; 0 on empty rows (PML's
  logsumexp over its index lists, a pair listed k times counting k times)."""
  keep = weights > 0
  return pairs.masked_logsumexp(x + jnp.log(jnp.where(keep, weights, 1.0)),
                                keep)


# Each core: (mat, pos_w, neg_w, distance, row_w, **hyperparameters) ->
# {sub-loss: (losses (N,) or (N, M), weights of the same shape)}.


def _contrastive_core(mat, pos_w, neg_w, d, row_w, *, pos_margin=0.0,
                      neg_margin=1.0):
  del row_w
  return {"pos_loss": (jax.nn.relu(margin(d, mat, pos_margin)), pos_w),
          "neg_loss": (jax.nn.relu(margin(d, neg_margin, mat)), neg_w)}


def _ntxent_core(mat, pos_w, neg_w, d, row_w, *, temperature=0.07):
  del row_w
  s = (mat if d.is_inverted else -mat) / temperature
  has_neg = jnp.any(neg_w > 0, axis=1, keepdims=True)
  log_neg = _wlse(s, neg_w)[:, None]
  log_den = jnp.where(has_neg, jnp.logaddexp(s, log_neg), s)
  # PML takes log(ratio + tiny): this caps a pair's loss at ~87.3 in float32.
  log_tiny = float(np.log(np.finfo(np.dtype(s.dtype)).tiny))
  losses = -jnp.logaddexp(s - log_den, log_tiny)
  # No negative pair at all: PML's zero loss.
  return {"loss": (losses, jnp.where(jnp.any(neg_w > 0), pos_w, 0.0))}


def _multi_similarity_core(mat, pos_w, neg_w, d, row_w, *, alpha=2.0,
                           beta=50.0, base=0.5):
  pos_loss = pairs.masked_logsumexp(alpha * margin(d, mat, base), pos_w > 0,
                                    add_one=True) / alpha
  neg_loss = pairs.masked_logsumexp(beta * margin(d, base, mat), neg_w > 0,
                                    add_one=True) / beta
  return {"loss": (pos_loss + neg_loss, row_w)}


def _circle_core(mat, pos_w, neg_w, d, row_w, *, m=0.4, gamma=80.0):
  del d  # CosineSimilarity only, as PML asserts
  pos, neg = pos_w > 0, neg_w > 0
  weight = jax.lax.stop_gradient(mat)  # PML detaches the self-paced weights
  logit_p = -gamma * jax.nn.relu(1.0 + m - weight) * (mat - (1.0 - m))
  logit_n = gamma * jax.nn.relu(weight + m) * (mat - m)
  lse = (pairs.masked_logsumexp(logit_p, pos)
         + pairs.masked_logsumexp(logit_n, neg))
  has_both = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
  # An anchor lacking a side is a 0 that still counts (MeanReducer).
  return {"loss": (jnp.where(has_both, jax.nn.softplus(lse), 0.0), row_w)}


def _generalized_lifted_structure_core(mat, pos_w, neg_w, d, row_w, *,
                                       neg_margin=1.0, pos_margin=0.0):
  losses = jax.nn.relu(
      pairs.masked_logsumexp(margin(d, mat, pos_margin), pos_w > 0)
      + pairs.masked_logsumexp(margin(d, neg_margin, mat), neg_w > 0))
  return {"loss": (losses, row_w)}


def _lifted_structure_core(mat, pos_w, neg_w, d, row_w, *, neg_margin=1.0,
                           pos_margin=0.0):
  """Per positive pair (a, p): the negatives listed for a or for p (PML's
  a2 == a1 | a2 == p), O(N M) as lifted.py. Against a reference set p is a
  reference index and PML's a2 == p names batch row p's negatives (none if
  p >= N): lifted.py's quirk, which defines PML's value."""
  del row_w
  n, m = mat.shape
  row_lse = _wlse(margin(d, neg_margin, mat), neg_w)
  has = jnp.any(neg_w > 0, axis=1)
  col_lse = row_lse[:m] if m <= n else jnp.pad(row_lse, (0, m - n))
  col_has = has[:m] if m <= n else jnp.pad(has, (0, m - n))
  a_lse, a_has = row_lse[:, None], has[:, None]
  # p == a lists a's negatives once, not twice.
  p_has = col_has[None, :] & (jnp.arange(m)[None, :] != jnp.arange(n)[:, None])
  p_lse = col_lse[None, :]
  union = jnp.where(a_has & p_has, jnp.logaddexp(a_lse, p_lse),
                    jnp.where(a_has, a_lse, jnp.where(p_has, p_lse, 0.0)))
  losses = jnp.square(jax.nn.relu(union + margin(d, mat, pos_margin))) / 2.0
  return {"loss": (losses, jnp.where(jnp.any(neg_w > 0), pos_w, 0.0))}


def _tuplet_margin_core(mat, pos_w, neg_w, d, row_w, *, margin=5.73,
                        scale=64.0):
  """Per positive pair log(1 + sum_n exp(scale (s_an - cos(theta_ap - m))))
  over the negatives listed for its anchor; cos(theta - m) as tuplet.py
  writes it (finite at cos = 1, where PML's acos is not)."""
  del d, row_w  # CosineSimilarity only, as PML asserts
  m = math.radians(margin)
  c = jnp.clip(mat, -1.0, 1.0)
  cos_minus = c * math.cos(m) + similarity.safe_sqrt(1.0 - c * c) * math.sin(m)
  has_neg = jnp.any(neg_w > 0, axis=1, keepdims=True)
  losses = jnp.where(
      has_neg, jax.nn.softplus(_wlse(scale * mat, neg_w)[:, None]
                               - scale * cos_minus), 0.0)
  return {"loss": (losses, jnp.where(jnp.any(neg_w > 0), pos_w, 0.0))}


def pad_row(dim: int, dtype) -> jax.Array:
  """The row padding becomes before any distance (Batch.x, the per-row
  losses' miners)."""
  # Padding may hold anything (NaN): a fixed non-constant row keeps every
  # distance (SNR's variance too) and its gradient finite.
  return jnp.arange(1, dim + 1, dtype=dtype)


class Batch(NamedTuple):
  """What a batch core (Composable.takes_batch) sees: the whole batch and
  the miner's raw output, for losses that are not one formula per pair."""
  x: jax.Array  # (N, D) rows, padding replaced by a fixed row (pad_row)
  labels: jax.Array  # (N,)
  mat: jax.Array  # (N, N) the loss's distance on x
  distance: Distance
  pos: jax.Array  # (N, N) bool label masks, padding in neither
  neg: jax.Array
  row_w: jax.Array  # (N,) 1 on valid rows
  mined: Any  # miners.Pairs | miners.Triplets; None: no miner

  def pair_weights(self) -> tuple[jax.Array, jax.Array]:
    """PML's convert_to_pairs as (pos, neg) multiplicities."""
    if self.mined is None:
      return self.pos.astype(self.x.dtype), self.neg.astype(self.x.dtype)
    return miners_lib.pair_counts(self.mined)

  def triplets(self) -> miners_lib.Triplets:
    """PML's convert_to_triplets(t_per_anchor="all")."""
    if self.mined is None:
      return miners_lib.Triplets(self.pos, self.neg)
    return miners_lib.as_triplets(self.mined)

  def pos_rank(self) -> jax.Array:
    """(N, N) int: where each positive pair sits in the miner's list (PML's
    pair order; smaller first): row-major unless the miner says otherwise."""
    rank = getattr(self.mined, "pos_order", None)
    if rank is not None:
      return rank
    n, m = self.mat.shape
    return jnp.arange(n)[:, None] * m + jnp.arange(m)[None, :]


class Composable(NamedTuple):
  core: Callable | None  # None: the triplet loss (see triplet_margin)
  default_distance: Callable[[], Distance]
  default_reducer: Callable[[], reducers_lib.Reducer]
  # PML asserts this distance (assert_distance_type); None: any.
  only_distance: str | None = None
  # The keywords PML's assertion fixes (a given one must have this value).
  distance_kwargs: dict[str, Any] | None = None
  # core(batch: Batch, **hp) instead of core(mat, pos_w, neg_w, d, row_w,
  # **hp) (see Batch).
  takes_batch: bool = False
  # The core returns the loss, reduced (PML's "already_reduced": its
  # reducer is ignored, so build refuses one).
  reduces_itself: bool = False
  # hp -> None, a ValueError for values PML's constructor refuses.
  check: Callable[[dict[str, Any]], None] | None = None


COMPOSABLE: dict[str, Composable] = {
    "contrastive": Composable(_contrastive_core, distances_lib.lp,
                              reducers_lib.avg_non_zero),
    "ntxent": Composable(_ntxent_core, distances_lib.cosine,
                         reducers_lib.mean),
    "multi_similarity": Composable(_multi_similarity_core,
                                   distances_lib.cosine, reducers_lib.mean),
    "circle": Composable(_circle_core, distances_lib.cosine,
                         reducers_lib.avg_non_zero, only_distance="cosine"),
    "generalized_lifted_structure": Composable(
        _generalized_lifted_structure_core, distances_lib.lp,
        reducers_lib.mean),
    "lifted_structure": Composable(_lifted_structure_core, distances_lib.lp,
                                   reducers_lib.mean),
    "tuplet_margin": Composable(_tuplet_margin_core, distances_lib.cosine,
                                reducers_lib.mean, only_distance="cosine"),
    "triplet_margin": Composable(None, distances_lib.lp,
                                 reducers_lib.avg_non_zero),
    # The losses of mined pairs or triplets that are not one formula per
    # pair (their files say how they read the miner's output).
    "signal_to_noise_ratio_contrastive": Composable(
        _contrastive_core, distances_lib.snr, reducers_lib.avg_non_zero,
        only_distance="snr"),
    "angular": Composable(
        angular_lib.angular_core, distances_lib.lp, reducers_lib.mean,
        only_distance="lp", takes_batch=True,
        distance_kwargs={"p": 2, "power": 1, "normalize_embeddings": True}),
    "npairs": Composable(npairs_lib.npairs_core, distances_lib.dot_product,
                         reducers_lib.mean, takes_batch=True),
    "threshold_consistent_margin": Composable(
        tcm_lib.threshold_consistent_margin_core, distances_lib.cosine,
        reducers_lib.mean, only_distance="cosine", takes_batch=True,
        reduces_itself=True, distance_kwargs={"power": 1}),
    "histogram": Composable(
        histogram_lib.histogram_core, distances_lib.cosine, reducers_lib.mean,
        takes_batch=True, reduces_itself=True,
        check=histogram_lib.check_hyperparameters),
    "dynamic_soft_margin": Composable(
        dsm_lib.dynamic_soft_margin_core, distances_lib.lp, reducers_lib.mean,
        only_distance="lp", takes_batch=True, reduces_itself=True,
        distance_kwargs={"p": 2, "normalize_embeddings": True},
        check=dsm_lib.check_hyperparameters),
}


# Why a REGISTRY loss takes no pieces, where "it computes its own" misleads.
WHY_NO_PIECES = {
    "instance": ("pytorch-metric-learning's InstanceLoss refuses an "
                 "indices_tuple and asserts CosineSimilarity; it scores every "
                 "row against every other"),
    "pnp": ("pytorch-metric-learning's PNPLoss refuses an indices_tuple and "
            "asserts CosineSimilarity; it ranks every negative against every "
            "positive"),
    "ranked_list": ("pytorch-metric-learning's RankedListLoss refuses an "
                    "indices_tuple; it weighs every pair of the batch itself "
                    "(LpDistance, mean over the anchors)"),
    "vicreg": ("pytorch-metric-learning's VICRegLoss refuses an "
               "indices_tuple, a distance and a regularizer; it compares two "
               "views, not pairs"),
    "manifold": ("pytorch-metric-learning's ManifoldLoss reads its "
                 "indices_tuple as the rows' meta classes, not a miner's "
                 "output (pass meta_classes= or key= to the loss), and uses "
                 "CosineSimilarity"),
    "self_supervised": ("the wrapped loss takes them, as in loss={'name': "
                        "'contrastive', 'distance': 'cosine'}"),
}


TRIPLET_HYPERPARAMETERS = {"margin": 0.05, "swap": False,
                           "smooth_loss": False, "triplets_per_anchor": "all"}


def _swap_rows(mat, d: Distance) -> jax.Array:
  """(M, M): PML's mat[p, n] for swap, row p of mat (the anchors'); against
  a reference set a p >= N names no row (PML would fail), so its swapped
  distance never wins."""
  n, m = mat.shape
  if m <= n:
    return mat[:m]
  far = -jnp.inf if d.is_inverted else jnp.inf
  return jnp.concatenate([mat, jnp.full((m - n, m), far, mat.dtype)])


def triplet_margin(mat, t: miners_lib.Triplets, d: Distance, labels,
                    reducer: reducers_lib.Reducer, *, margin_: float,
                    smooth_loss: bool, swap: bool = False) -> jax.Array:
  """TripletMarginLoss over the triplets t, reduced, in O(N M) memory.
  swap: d(a, n) is the closer of d(a, n) and d(p, n) (PML's swap)."""
  if (t.window is None and t.pos.dtype == bool and t.neg.dtype == bool
      and reducer.name == "avg_non_zero" and not smooth_loss and not swap):
    # Every (p, n) of an anchor: the sort-based walk of triplet.py.
    total, count = triplet_lib.violation_sum_count(
        -mat if d.is_inverted else mat, t.pos, t.neg, margin_,
        semihard=False)
    return total / jnp.maximum(count, 1.0)

  def one_anchor(args):
    a, row, p, n, label = args
    an = row[None, :]
    if swap:  # PML: distance.smallest_dist(an, mat[p, n])
      an = (jnp.maximum if d.is_inverted else jnp.minimum)(an, pn)
    # PML: distance.margin(ap, an) + margin, [p, n].
    viol = margin(d, row[:, None], an) + margin_
    losses = jax.nn.softplus(viol) if smooth_loss else jax.nn.relu(viol)
    return reducers_lib.sum_count(reducer, losses,
                                  miners_lib.tile(t, a, p, n), label)
  pn = _swap_rows(mat, d) if swap else None
  # Rematerialised: the backward pass keeps no (N, M, M) residuals either.
  totals, counts = miners_lib.walk_anchors(
      jax.checkpoint(one_anchor),
      (jnp.arange(mat.shape[0]), mat, t.pos, t.neg, labels), mat.shape[1])
  return reducers_lib.finish(reducer, jnp.sum(totals), jnp.sum(counts))

