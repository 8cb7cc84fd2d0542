"""`build`: a pair or triplet loss composed with a distance, a miner and a
reducer, as pytorch-metric-learning composes them.

`build("contrastive", miner={"name": "multi_similarity", "epsilon": 0.1})`
is PML's `ContrastiveLoss()(emb, labels, MultiSimilarityMiner(epsilon=0.1)(
emb, labels))`; each piece is a name or `{"name": ..., **its_kwargs}` with
PML's names and keywords (a miner's dict may name its own "distance"), and
None is that loss's PML default (its distance, its reducer, no miner).

A composable loss is its per-element / per-pair / per-triplet values on one
(N, M) distance matrix (the `_core` functions below), reduced per sub-loss
(contrastive's pos_loss and neg_loss) and summed, as PML's MultipleReducers.
Mined tuples arrive as masks (miners.py): a pair loss gets each pair's
multiplicity in PML's index lists, a triplet loss walks the anchors. The
losses that are not one formula per pair (angular, npairs, histogram, ...:
their own files) take the whole `Batch` and the miner's raw output instead
(`takes_batch`), and some reduce their losses themselves, as PML's
"already_reduced" ones (`reduces_itself`: build refuses a reducer there).

Random miners (uniform_histogram, distance_weighted) make the loss take
`key=`, a jax PRNG key.

The losses with learnable class vectors and NCA / Smooth-AP (ROW_LOSSES)
compose too, as PML lets them: their per-row values (`*_per_row`), weighted
by a miner as PML's convert_to_weights does (how often a row occurs in the
mined tuples, over the largest count), then reduced by any element reducer
(their sub-loss is "loss", Smooth-AP's "ap_loss"); nca takes any distance,
the others only the one PML asserts. The built fn takes the learnable
arrays as keywords: `build("cosface", miner="multi_similarity")(x, labels,
W=W)`.

Regularizers: `regularizer=` is the embedding regularizer (PML's
embedding_regularizer, weighted by the hyper-parameter embedding_reg_weight,
default 1); `weight_regularizer=` (weight_reg_weight) is PML's
weight_regularizer on the loss's class vectors (the rows of W.t(), the
proxies, SoftTriple's centres), for the losses that mix in PML's
WeightRegularizerMixin: normalized_softmax, cosface, arcface,
subcenter_arcface, large_margin_softmax, sphereface, soft_triple,
proxy_anchor, proxy_nca. Any regularizer (regularizers.py: lp, zero_mean,
center_invariant, regular_face, sparse_centers) serves either way. A config
sets both through config.loss.regularizer as `{"embeddings": ...,
"weights": ...}` (a name or dict alone is the embedding regularizer).

Not here yet: a reference set (ref_emb; cross-batch memory is
`losses.xbm_loss`), TripletMarginLoss's swap and triplets_per_anchor, the
do_nothing reducer (a training step needs a scalar), proxy_anchor's miner
and reducer (it takes only regularizers here), and PML's other losses (they
build with their defaults from REGISTRY, without pieces).

Deliberate differences from PML:
- as in multi_similarity.py, PML's GenericPairLoss returns 0 whenever at
  most one positive and one negative pair were mined in all; here such a
  batch gets the formula's value;
- per_anchor with a miner that lists a pair more than once (a triplet miner
  feeding a pair loss): PML's value counts the pair once and its gradient
  once per listing; here the gradient is the value's;
- class_weighted on losses whose PML values are (N, 1) (see reducers.py),
  and per_anchor on lifted_structure / tuplet_margin / angular (PML fails
  on their (P, 1) values): here the documented reduction;
- HDC keeps every pair tied with its k-th value (miners.hdc).
- class_weighted as an embedding regularizer's reducer weighs a row by its
  label's weight; PML's by its row number (a weight regularizer's rows are
  the classes: both weigh class i's vector by weights[i]).
"""

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.errors import UserError
from metricjax.losses import angular as angular_lib
from metricjax.losses import distances as distances_lib
from metricjax.losses import dynamic_soft_margin as dsm_lib
from metricjax.losses import histogram as histogram_lib
from metricjax.losses import miners as miners_lib
from metricjax.losses import npairs as npairs_lib
from metricjax.losses import pairs
from metricjax.losses import reducers as reducers_lib
from metricjax.losses import regularizers as regularizers_lib
from metricjax.losses import threshold_consistent_margin as tcm_lib
from metricjax.losses import triplet as triplet_lib
from metricjax.losses.distances import Distance, margin
from metricjax.losses.margin_softmax import arcface_per_row
from metricjax.losses.margin_softmax import cosface_per_row
from metricjax.losses.margin_softmax import large_margin_softmax_per_row
from metricjax.losses.margin_softmax import sphereface_per_row
from metricjax.losses.margin_softmax import subcenter_arcface_per_row
from metricjax.losses.nca import nca_per_row
from metricjax.losses.proxy import normalized_softmax_per_row
from metricjax.losses.proxy import proxy_nca_per_row
from metricjax.losses.registry import check_loss_hyperparameters
from metricjax.losses.registry import REGISTRY
from metricjax.losses.smooth_ap import smooth_ap_per_row
from metricjax.losses.soft_triple import soft_triple_per_row
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
  a2 == a1 | a2 == p), O(N M) as lifted.py; a self-compared batch only."""
  del row_w
  row_lse = _wlse(margin(d, neg_margin, mat), neg_w)
  has = jnp.any(neg_w > 0, axis=1)
  a_lse, a_has = row_lse[:, None], has[:, None]
  p_lse, p_has = row_lse[None, :], has[None, :]
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


class Batch(NamedTuple):
  """What a batch core (Composable.takes_batch) sees: the whole batch and
  the miner's raw output, for losses that are not one formula per pair."""
  x: jax.Array  # (N, D) rows, padding replaced by a fixed row (_pad_row)
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
  core: Callable | None  # None: the triplet loss (see _triplet_margin)
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
_WHY_NO_PIECES = {
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
# Today's names and their welded-in options, kept for configs.
ALIASES = {"ms": "multi_similarity", "triplet": "triplet_margin"}


def _triplet_margin(mat, t: miners_lib.Triplets, d: Distance, labels,
                    reducer: reducers_lib.Reducer, *, margin_: float,
                    smooth_loss: bool) -> jax.Array:
  """TripletMarginLoss over the triplets t, reduced, in O(N M) memory."""
  if (t.window is None and t.pos.dtype == bool and t.neg.dtype == bool
      and reducer.name == "avg_non_zero" and not smooth_loss):
    # Every (p, n) of an anchor: the sort-based walk of triplet.py.
    total, count = triplet_lib.violation_sum_count(
        -mat if d.is_inverted else mat, t.pos, t.neg, margin_,
        semihard=False)
    return total / jnp.maximum(count, 1.0)

  def one_anchor(args):
    a, row, p, n, label = args
    # PML: distance.margin(ap, an) + margin, [p, n].
    viol = margin(d, row[:, None], row[None, :]) + margin_
    losses = jax.nn.softplus(viol) if smooth_loss else jax.nn.relu(viol)
    return reducers_lib.sum_count(reducer, losses,
                                  miners_lib.tile(t, a, p, n), label)
  # Rematerialised: the backward pass keeps no (N, M, M) residuals either.
  totals, counts = miners_lib.walk_anchors(
      jax.checkpoint(one_anchor),
      (jnp.arange(mat.shape[0]), mat, t.pos, t.neg, labels), mat.shape[1])
  return reducers_lib.finish(reducer, jnp.sum(totals), jnp.sum(counts))


def _spec(piece, what: str) -> tuple[str, dict[str, Any]]:
  if hasattr(piece, "to_dict"):  # a ConfigDict from config.loss
    piece = piece.to_dict()
  if isinstance(piece, str):
    return piece, {}
  if isinstance(piece, dict) and isinstance(piece.get("name"), str):
    kwargs = dict(piece)
    return kwargs.pop("name"), kwargs
  raise UserError(f"The {what} {piece!r} should be a name or a dict "
                  f"{{'name': ..., **kwargs}} (config.loss.{what}).")


def _construct(registry, name, kwargs, what):
  if name not in registry:
    raise UserError(f"Unknown {what} {name!r} (config.loss.{what}). Known "
                    f"{what}s: {', '.join(sorted(registry))}.")
  factory = registry[name]
  factory = factory.fn if hasattr(factory, "fn") else factory
  taken = [p.name for p in inspect.signature(factory).parameters.values()
           if p.kind == inspect.Parameter.KEYWORD_ONLY]
  unknown = sorted(set(kwargs) - set(taken))
  if unknown:
    raise UserError(f"The {what} {name!r} takes no {', '.join(unknown)}; it "
                    f"takes: {', '.join(taken) or 'nothing'} "
                    "(pytorch-metric-learning's keywords).")


def make_distance(piece) -> Distance:
  if isinstance(piece, Distance):
    return piece
  name, kwargs = _spec(piece, "distance")
  _construct(distances_lib.REGISTRY, name, kwargs, "distance")
  return distances_lib.REGISTRY[name](**kwargs)


def make_reducer(piece) -> reducers_lib.Reducer:
  if isinstance(piece, reducers_lib.Reducer):
    return piece
  name, kwargs = _spec(piece, "reducer")
  _construct(reducers_lib.REGISTRY, name, kwargs, "reducer")
  # Nested reducers, as PML's constructors take reducer objects.
  if kwargs.get("reducer") is not None:
    kwargs["reducer"] = make_reducer(kwargs["reducer"])
  if kwargs.get("default_reducer") is not None:
    kwargs["default_reducer"] = make_reducer(kwargs["default_reducer"])
  if "reducers" in kwargs:
    kwargs["reducers"] = {k: make_reducer(v)
                          for k, v in dict(kwargs["reducers"]).items()}
  return reducers_lib.REGISTRY[name](**kwargs)


class BoundMiner(NamedTuple):
  name: str
  # (mat, pos, neg, distance[, x=the rows]) -> Pairs | Triplets
  fn: Callable
  distance: Distance
  takes_x: bool = False
  random: bool = False  # takes key=


def make_miner(piece) -> BoundMiner:
  name, kwargs = _spec(piece, "miner")
  distance = kwargs.pop("distance", None)
  _construct(miners_lib.REGISTRY, name, kwargs, "miner")
  miner = miners_lib.REGISTRY[name]
  if miner.fixed_distance and distance is not None and _spec(
      distance, "distance") not in (("lp", {}), ("lp", {"p": 2}),
                                    ("lp", {"p": 2, "power": 1})):
    raise UserError(
        f"The miner {name!r} works only on the default lp distance (p=2, "
        "power=1, normalised; pytorch-metric-learning asserts it): drop the "
        "miner's distance, or use a miner that takes one (triplet_margin, "
        "batch_hard, pair_margin, multi_similarity, ...).")
  distance = miner.default_distance() if distance is None else make_distance(
      distance)
  fn = functools.partial(miner.fn, **kwargs)
  # A bad keyword value (type_of_triplets="x") fails here, not under jit.
  extra = {"x": jnp.ones((2, 2))} if miner.fixed_distance else {}
  if miner.random:
    extra["key"] = jax.random.key(0)
  try:
    fn(jnp.zeros((2, 2)), jnp.zeros((2, 2), bool), jnp.zeros((2, 2), bool),
       distance, **extra)
  except ValueError as e:
    raise UserError(f"The miner {name!r}: {e} (config.loss.miner).") from None
  return BoundMiner(name, fn, distance, miner.fixed_distance, miner.random)


def mine(bound: BoundMiner, x, pos, neg, key=None, ref=None):
  """The miner's output on anchors x against ref (default: x itself), no
  gradient, as PML mines."""
  x = jax.lax.stop_gradient(x)
  ref = x if ref is None else jax.lax.stop_gradient(ref)
  extra = {"x": x} if bound.takes_x else {}
  if bound.random:
    if key is None:
      raise ValueError(f"miner {bound.name!r} is random: pass key=")
    extra["key"] = key
  return bound.fn(bound.distance.fn(x, ref), pos, neg, bound.distance,
                  **extra)


# PML's losses that supply a divisor (their default reducer is divisor).
DIVISOR_LOSSES = ("margin", "proxy_anchor")


def unreduced(name: str) -> bool:
  """Whether the do_nothing reducer can return loss `name`'s losses: the
  pair losses, whose values are (N,) or (N, M) arrays."""
  spec = COMPOSABLE.get(ALIASES.get(name, name))
  return (spec is not None and spec.core is not None
          and not spec.reduces_itself)


def _check_reducer(name: str, reducer: reducers_lib.Reducer,
                   regularized: bool = False) -> None:
  subs = ([reducer.default, *reducer.sub.values()]
          if reducer.name == "multiple" else [reducer])
  for r in subs:
    if r.name == "divisor":
      raise UserError(
          f"The divisor reducer needs a loss that supplies a divisor, and "
          f"{name!r} does not (pytorch-metric-learning raises a KeyError "
          f"there too); {', '.join(DIVISOR_LOSSES)} do, and it is their "
          "default. Use mean, sum, avg_non_zero, threshold, class_weighted, "
          "per_anchor or multiple (config.loss.reducer).")
    if r.name == "do_nothing" and (r is not reducer or regularized
                                   or not unreduced(name)):
      raise UserError(
          "The do_nothing reducer returns the unreduced losses of a pair "
          f"loss alone ({', '.join(n for n in sorted(COMPOSABLE) if unreduced(n))}"
          "; no regularizer, not inside multiple), as a library call: "
          f"{name!r} is not one. A training step needs one number: use "
          "mean, sum, avg_non_zero, threshold, class_weighted, per_anchor "
          "or multiple (config.loss.reducer).")
    if r.name == "per_anchor" and name == "triplet_margin":
      raise UserError(
          "The per_anchor reducer does not reduce triplets (PML raises "
          "NotImplementedError); use it with a pair loss ("
          f"{', '.join(sorted(set(COMPOSABLE) - {'triplet_margin'}))}) or "
          "give triplet_margin mean, sum, avg_non_zero, threshold or "
          "class_weighted (config.loss.reducer).")


def _legacy(name, distance, miner, hyperparameters):
  """The short names' welded-in options as pieces, so build("ms", **kw) and
  build("triplet", **kw) keep today's REGISTRY numbers."""
  hp = dict(hyperparameters)
  if name == "ms":
    epsilon = hp.pop("epsilon", 0.1)
    if epsilon is not None and miner is None:
      miner = {"name": "multi_similarity", "epsilon": epsilon}
    elif epsilon is not None and "epsilon" in hyperparameters and miner:
      raise UserError("Loss 'ms' got both epsilon (its own miner) and a "
                      "miner; give one (or use 'multi_similarity').")
  if name == "triplet":
    normalize = hp.pop("normalize", True)
    if distance in ("euclidean", "squared_euclidean"):
      distance = {"name": "lp", "normalize_embeddings": normalize,
                  "power": 2 if distance == "squared_euclidean" else 1}
    elif distance is None and not normalize:
      distance = {"name": "lp", "normalize_embeddings": False}
    mining = hp.pop("mining", "all")
    if mining != "all" and miner is not None:
      raise UserError("Loss 'triplet' got both mining and a miner; give one "
                      "(or use 'triplet_margin').")
    if mining == "hard":
      miner = {"name": "batch_hard"}
    elif mining == "semihard":
      miner = {"name": "triplet_margin", "type_of_triplets": "semihard",
               "margin": hp.get("margin", 0.05)}
    elif mining != "all":
      raise UserError(f"Loss 'triplet' takes mining all, hard or semihard, "
                      f"not {mining!r}.")
    if isinstance(miner, dict) and distance is not None:
      miner["distance"] = distance
  return distance, miner, hp


def build(name: str, *, distance=None, miner=None, reducer=None,
          regularizer=None, weight_regularizer=None,
          **hyperparameters) -> Callable[..., jax.Array]:
  """The pure loss `fn(x, labels, *, mask=None, key=None, **learnable) ->
  scalar` (key: a jax PRNG key, needed by the random miners only;
  learnable: the loss's arrays, e.g. W=).

  Args:
    name: the loss, the snake case of PML's class without `Loss`, or one of
      today's names (REGISTRY), e.g. "ms", "triplet".
    distance, miner, reducer: a name or {"name": ..., **kwargs}; None is the
      loss's PML default (no miner).
    regularizer: an embedding regularizer (regularizers.py), as PML's
      embedding_regularizer; its weight is the hyper-parameter
      embedding_reg_weight (default 1). Or {"embeddings": ..., "weights":
      ...}: both regularizers (config.loss.regularizer).
    weight_regularizer: a regularizer of the loss's class vectors, as PML's
      weight_regularizer (ROW_LOSSES with `weights`); its weight is the
      hyper-parameter weight_reg_weight (default 1).
    **hyperparameters: the loss's keywords, PML's names.

  Raises:
    UserError: an unknown piece or keyword, or a combination PML refuses.
  """
  regularizer, weight_regularizer = _split_regularizers(regularizer,
                                                        weight_regularizer)
  if name in ROW_LOSSES:
    return _build_row_loss(name, distance, miner, reducer, regularizer,
                           weight_regularizer, hyperparameters)
  if weight_regularizer is not None:
    raise UserError(
        f"Loss {name!r} has no learnable class vectors to regularize "
        "(config.loss.regularizer's 'weights'); the losses that take a "
        "weight regularizer are "
        f"{', '.join(sorted(n for n, r in ROW_LOSSES.items() if r.weights))}.")
  if name in ALIASES:
    distance, miner, hyperparameters = _legacy(name, distance, miner,
                                               hyperparameters)
    name = ALIASES[name]
  if name not in COMPOSABLE:
    if name not in REGISTRY:
      raise UserError(
          f"Unknown loss {name!r} (config.loss.name). Known losses: "
          f"{', '.join(sorted(set(REGISTRY) | set(COMPOSABLE)))}.")
    if name in DIVISOR_LOSSES and reducer is not None and _spec(
        reducer, "reducer") == ("divisor", {}):
      reducer = None  # Its default: the loss divides by its own divisor.
    given = [w for w, p in (("distance", distance), ("miner", miner),
                            ("reducer", reducer),
                            ("regularizer", regularizer)) if p is not None]
    if given:
      why = _WHY_NO_PIECES.get(name, "it computes its own")
      raise UserError(
          f"Loss {name!r} takes no {' or '.join(given)} here: {why}. The "
          "losses that compose with a distance, a miner and a "
          f"reducer are {', '.join(sorted(COMPOSABLE))} (and the aliases "
          f"{', '.join(sorted(ALIASES))}), with a miner and a reducer "
          f"{', '.join(sorted(ROW_LOSSES))}; or drop "
          f"config.loss.{given[0]}.")
    check_loss_hyperparameters(name, REGISTRY[name], hyperparameters)
    return functools.partial(REGISTRY[name].fn, **hyperparameters)

  spec = COMPOSABLE[name]
  defaults = (TRIPLET_HYPERPARAMETERS if spec.core is None else {
      p.name: p.default for p in inspect.signature(spec.core).parameters.values()
      if p.kind == inspect.Parameter.KEYWORD_ONLY})
  unknown = sorted(set(hyperparameters) - set(defaults)
                  - ({"embedding_reg_weight"} if regularizer is not None
                     else set()))
  if unknown:
    raise UserError(f"Loss {name!r} takes no hyper-parameter "
                    f"{', '.join(unknown)}. It takes: {', '.join(defaults)}.")
  if regularizer is not None:
    defaults = {**defaults, "embedding_reg_weight": 1.0}
  hp = {**defaults, **hyperparameters}
  if spec.core is None:
    if hp["swap"] or hp["triplets_per_anchor"] != "all":
      raise UserError("triplet_margin's swap and triplets_per_anchor are not "
                      "supported yet: leave swap=False and "
                      "triplets_per_anchor='all' (use a miner to choose "
                      "triplets).")
  if distance is not None and spec.only_distance is not None:
    d_name, _ = _spec(distance, "distance") if not isinstance(
        distance, Distance) else (None, None)
    if d_name != spec.only_distance:
      raise UserError(
          f"Loss {name!r} works only on the {spec.only_distance!r} distance "
          "(pytorch-metric-learning asserts it); leave config.loss.distance "
          f"unset or {spec.only_distance!r}, and choose a miner's own "
          "distance in its dict instead.")
  _check_fixed(name, spec, distance, reducer, hp)
  dist = spec.default_distance() if distance is None else make_distance(
      distance)
  red = spec.default_reducer() if reducer is None else make_reducer(reducer)
  _check_reducer(name, red, regularizer is not None)
  bound = None if miner is None else make_miner(miner)
  reg = None if regularizer is None else make_regularizer(regularizer)
  return functools.partial(_composed, name, spec, dist, bound, red, reg,
                           tuple(sorted(hp.items())))


def _check_fixed(name, spec: Composable, distance, reducer, hp) -> None:
  """UserErrors for what PML asserts or ignores beyond the distance's name:
  the asserted distance keywords, a reducer of an already-reduced loss, and
  hyper-parameter values its constructor refuses."""
  if distance is not None and spec.distance_kwargs is not None:
    _, kwargs = _spec(distance, "distance")
    fixed = spec.distance_kwargs
    wrong = sorted(k for k, v in kwargs.items() if k in fixed and v != fixed[k])
    if wrong:
      raise UserError(
          f"Loss {name!r} works only on the {spec.only_distance!r} distance "
          f"with {', '.join(f'{k}={v!r}' for k, v in fixed.items())} "
          "(pytorch-metric-learning asserts or ignores the "
          f"rest); drop {', '.join(wrong)} from config.loss.distance.")
  if reducer is not None and spec.reduces_itself:
    takers = sorted(k for k, c in COMPOSABLE.items() if not c.reduces_itself)
    raise UserError(
        f"Loss {name!r} reduces its own losses (pytorch-metric-learning "
        "ignores a reducer there); leave config.loss.reducer unset. The "
        f"losses that take a reducer are {', '.join(takers)}.")
  if spec.check is not None:
    try:
      spec.check(hp)
    except ValueError as e:
      raise UserError(f"Loss {name!r}: {e} (config.loss.kwargs).") from None


def make_regularizer(piece):
  """(penalty fn, its reducer) from a name or dict; the dict may name the
  regularizer's own "reducer" (default: PML's, mean but for
  sparse_centers' divisor)."""
  name, kwargs = _spec(piece, "regularizer")
  reducer = kwargs.pop("reducer", None)
  _construct(regularizers_lib.REGISTRY, name, kwargs, "regularizer")
  if reducer is None:
    reducer = regularizers_lib.DEFAULT_REDUCERS.get(name, "mean")
  reducer = make_reducer(reducer)
  if reducer.name in ("divisor", "do_nothing") and not (
      reducer.name == "divisor" and name in regularizers_lib.DEFAULT_REDUCERS):
    raise UserError(
        f"The regularizer {name!r} cannot take the {reducer.name} reducer "
        "(it supplies no divisor / a regularizer must reduce to a number); "
        "use mean, sum, avg_non_zero, threshold or class_weighted.")
  try:
    fn = regularizers_lib.REGISTRY[name](**kwargs)
  except (TypeError, ValueError) as e:
    raise UserError(f"The regularizer {name!r}: {e} "
                    "(config.loss.regularizer).") from None
  return fn, reducer


def _penalty(reg, rows, valid, labels) -> jax.Array:
  """A regularizer's reduced penalty on rows (PML's already-reduced
  sub-loss, before its weight)."""
  fn, reducer = reg
  out = fn(rows, valid)
  if not isinstance(out, regularizers_lib.Penalties):
    out = regularizers_lib.Penalties(out, valid.astype(rows.dtype))
  if reducer.name == "divisor":  # PML's DivisorReducer; 0 when divisor is 0
    total = jnp.sum(jnp.where(out.weights > 0, out.losses * out.weights, 0.0))
    return total / out.divisor if out.divisor else total * 0.0
  return reducers_lib.reduce(reducer, out.losses, out.weights, labels, valid)


def _pad_row(dim: int, dtype) -> jax.Array:
  # Padding may hold anything (NaN): a fixed non-constant row keeps every
  # distance (SNR's variance too) and its gradient finite.
  return jnp.arange(1, dim + 1, dtype=dtype)


class References(NamedTuple):
  """A reference set the anchors are compared with instead of themselves
  (PML's ref_emb, ref_labels): a cross-batch memory (losses/xbm.py)."""
  embeddings: jax.Array  # (M, D)
  labels: jax.Array  # (M,)
  mask: jax.Array | None  # (M,) bool, the filled slots
  self_index: jax.Array | None  # (N,) each anchor's own slot, -1: none


# Losses whose value on a reference set is not PML's yet, and miners that
# mine the batch against itself only.
NO_REFERENCES = ("lifted_structure",)
MINERS_WITHOUT_REFERENCES = ("angular",)


def takes_references(name: str, miner: str | None = None) -> bool:
  """Whether loss `name` (with that miner) takes a reference set, e.g. a
  cross-batch memory."""
  name = ALIASES.get(name, name)
  return (name in COMPOSABLE and name not in NO_REFERENCES
          and not COMPOSABLE[name].takes_batch
          and miner not in MINERS_WITHOUT_REFERENCES)


def _composed(name, spec: Composable, dist: Distance, bound, red, reg, hp,
              x, labels, *, mask=None, key=None, ref_embeddings=None,
              ref_labels=None, ref_mask=None, self_index=None, **learnable):
  if learnable:
    raise TypeError(f"loss {name!r} has no learnable {sorted(learnable)}")
  refs = None
  if ref_embeddings is not None:
    if not takes_references(name, bound and bound.name):
      raise ValueError(f"{name!r} with miner {bound and bound.name!r} takes "
                       "no reference set")
    refs = References(ref_embeddings, ref_labels, ref_mask, self_index)
  hp = dict(hp)
  reg_weight = hp.pop("embedding_reg_weight", None)
  value = _loss_value(spec, dist, bound, red, hp, x, labels, mask, key, refs)
  if reg is None:
    return value
  return value + reg_weight * _embedding_penalty(reg, x, labels, mask)


def _embedding_penalty(reg, x, labels, mask) -> jax.Array:
  # PML's embedding_reg_loss: already reduced, added as a sub-loss.
  valid = (jnp.ones(labels.shape, bool) if mask is None else mask)
  rows = x if mask is None else jnp.where(mask[:, None], x, 0.0)
  return _penalty(reg, rows, valid, labels)


def _loss_value(spec, dist, bound, red, hp, x, labels, mask, key, refs):
  pad = _pad_row(x.shape[1], x.dtype)
  if mask is not None:
    x = jnp.where(mask[:, None], x, pad)
  row_w = (jnp.ones(labels.shape, x.dtype) if mask is None
           else mask.astype(x.dtype))
  not_self = None
  if refs is None:
    ref = x
    pos, neg = similarity.label_masks(labels, mask=mask)
  else:
    ref = refs.embeddings
    if refs.mask is not None:
      ref = jnp.where(refs.mask[:, None], ref, pad)
    pos, neg = similarity.label_masks(labels, refs.labels, mask, refs.mask)
    if refs.self_index is not None:
      not_self = pairs.not_self(refs.self_index, ref.shape[0])
  mat = dist.fn(x, ref)
  mined = None
  if bound is not None:
    # As CrossBatchMemory: the miner sees each anchor's own slot as a
    # positive, which is removed from what it mined.
    mined = mine(bound, x, pos, neg, key, ref)
    if not_self is not None:
      mined = mined._replace(pos=jnp.where(not_self, mined.pos,
                                           jnp.zeros_like(mined.pos)))
  if not_self is not None:
    pos &= not_self
  if spec.takes_batch:
    out = spec.core(Batch(x, labels, mat, dist, pos, neg, row_w, mined), **hp)
    if spec.reduces_itself:
      return out
    return _reduce_sub_losses(red, out, labels, row_w)
  if spec.core is None:
    t = (miners_lib.Triplets(pos, neg) if mined is None
         else miners_lib.as_triplets(mined))
    return _triplet_margin(mat, t, dist, labels,
                           reducers_lib.for_sub_loss(red, "loss"),
                           margin_=hp["margin"],
                           smooth_loss=hp["smooth_loss"])
  if mined is None:
    pos_w, neg_w = pos.astype(x.dtype), neg.astype(x.dtype)
  else:
    pos_w, neg_w = miners_lib.pair_counts(mined)
  sub_losses = spec.core(mat, pos_w, neg_w, dist, row_w, **hp)
  return _reduce_sub_losses(red, sub_losses, labels, row_w)


def _reduce_sub_losses(red, sub_losses, labels, row_w):
  if red.name == "do_nothing":
    # PML's loss dict unreduced, in fixed shapes: each sub-loss's losses
    # and how often each entry is listed (0: not a tuple of the batch).
    return {k: {"losses": losses, "weights": weights}
            for k, (losses, weights) in sub_losses.items()}
  return sum(reducers_lib.reduce(reducers_lib.for_sub_loss(red, k), losses,
                                 weights, labels, row_w)
             for k, (losses, weights) in sub_losses.items())


class RowLoss(NamedTuple):
  """A loss whose PML values are per row (reduction "element") or already
  reduced, and which pieces it takes."""
  # (x, labels, *, mask, **learnable, **hp) -> (losses (N,), rows that
  # count (N,)); None: REGISTRY's fn, already reduced (regularizers only).
  per_row: Callable | None
  # The learnable array PML's WeightRegularizerMixin regularizes (None: PML
  # takes no weight_regularizer), and whether its rows are W's columns.
  weights: str | None = None
  transpose: bool = False
  # The distances PML accepts besides the default, or any (per_row then
  # takes distance=).
  distances: tuple[str, ...] = ()
  any_distance: bool = False
  sub_loss: str = "loss"  # PML's sub-loss name (the multiple reducer's key)
  # A miner weights the rows by their anchors only (PML's using_ref: the
  # loss compares the batch with its proxies).
  anchors_only: bool = False
  # Why a miner or a reducer is refused where per_row is None.
  refusal: str = ""


ROW_LOSSES: dict[str, RowLoss] = {
    "large_margin_softmax": RowLoss(large_margin_softmax_per_row, "W", True,
                                    ("cosine",)),
    "sphereface": RowLoss(sphereface_per_row, "W", True, ("cosine",)),
    "cosface": RowLoss(cosface_per_row, "W", True, ("cosine",)),
    "arcface": RowLoss(arcface_per_row, "W", True, ("cosine",)),
    "subcenter_arcface": RowLoss(subcenter_arcface_per_row, "W", True,
                                 ("cosine",)),
    "normalized_softmax": RowLoss(normalized_softmax_per_row, "W", True,
                                  ("dot_product",)),
    "soft_triple": RowLoss(soft_triple_per_row, "fc", True, ("cosine",)),
    "proxy_nca": RowLoss(proxy_nca_per_row, "proxies", anchors_only=True),
    "proxy_anchor": RowLoss(None, "proxies", refusal=(
        "proxy_anchor takes no miner or reducer here yet (PML's weights its "
        "proxies' terms by a miner and divides by its own divisors)")),
    "nca": RowLoss(nca_per_row, any_distance=True),
    "smooth_ap": RowLoss(smooth_ap_per_row, distances=("cosine",),
                         sub_loss="ap_loss"),
    "p2sgrad": RowLoss(None, refusal=(
        "p2sgrad takes no miner (PML raises on an indices_tuple) and no "
        "reducer (its value is already reduced: PML's reducer changes "
        "nothing)")),
}


def _split_regularizers(regularizer, weight_regularizer):
  """(embedding regularizer, weight regularizer) from build's keywords, the
  first possibly {"embeddings": ..., "weights": ...}."""
  if hasattr(regularizer, "to_dict"):
    regularizer = regularizer.to_dict()
  if not (isinstance(regularizer, dict) and "name" not in regularizer):
    return regularizer, weight_regularizer
  unknown = sorted(set(regularizer) - {"embeddings", "weights"})
  if unknown:
    raise UserError(
        f"config.loss.regularizer {regularizer!r}: a regularizer is a name, "
        "{'name': ..., **kwargs}, or {'embeddings': ..., 'weights': ...} "
        f"(not {', '.join(unknown)}).")
  if regularizer.get("weights") is not None and weight_regularizer is not None:
    raise UserError("Two weight regularizers: give regularizer={'weights': "
                    "...} or weight_regularizer=, not both.")
  return (regularizer.get("embeddings"),
          weight_regularizer if weight_regularizer is not None
          else regularizer.get("weights"))


def _build_row_loss(name, distance, miner, reducer, regularizer,
                    weight_regularizer, hyperparameters):
  """build() for ROW_LOSSES."""
  spec = ROW_LOSSES[name]
  hp = dict(hyperparameters)
  hp.pop("num_classes", None)  # sizes the parameters (init) only
  extra = {}
  for key, piece in (("embedding_reg_weight", regularizer),
                     ("weight_reg_weight", weight_regularizer)):
    if piece is not None:
      extra[key] = hp.pop(key, 1.0)
  check_loss_hyperparameters(name, REGISTRY[name], hp)
  if weight_regularizer is not None and spec.weights is None:
    raise UserError(
        f"Loss {name!r} takes no weight regularizer (PML's has no "
        "weight_regularizer); the losses that do are "
        f"{', '.join(sorted(n for n, r in ROW_LOSSES.items() if r.weights))}"
        "; or regularize the embeddings (config.loss.regularizer).")
  if spec.per_row is None and (miner is not None or reducer is not None):
    raise UserError(f"{spec.refusal}; drop config.loss.miner and "
                    "config.loss.reducer.")
  dist = None
  if distance is not None:
    d_spec = (None, None) if isinstance(distance, Distance) else _spec(
        distance, "distance")
    if spec.any_distance:
      dist = make_distance(distance)
    elif d_spec not in [(d, {}) for d in spec.distances]:
      raise UserError(
          f"Loss {name!r} works only on its default distance "
          f"({', '.join(spec.distances) or 'built in'}; pytorch-metric-"
          "learning asserts it, or its form here has it built in): leave "
          "config.loss.distance unset, and choose a miner's own distance in "
          "its dict instead.")
  red = reducers_lib.mean() if reducer is None else make_reducer(reducer)
  _check_reducer(name, red)
  bound = None if miner is None else make_miner(miner)
  emb_reg = None if regularizer is None else make_regularizer(regularizer)
  w_reg = (None if weight_regularizer is None
           else make_regularizer(weight_regularizer))
  return functools.partial(_row_composed, name, spec, dist, bound, red,
                           emb_reg, w_reg, tuple(sorted(hp.items())),
                           tuple(sorted(extra.items())))


def _row_composed(name, spec: RowLoss, dist, bound, red, emb_reg, w_reg, hp,
                  reg_weights, x, labels, *, mask=None, key=None,
                  **learnable):
  hp, reg_weights = dict(hp), dict(reg_weights)
  if spec.per_row is None:
    value = REGISTRY[name].fn(x, labels, mask=mask, **learnable, **hp)
  else:
    if spec.any_distance:
      hp["distance"] = dist
    losses, counted = spec.per_row(x, labels, mask=mask, **learnable, **hp)
    if bound is not None:
      rows = x if mask is None else jnp.where(
          mask[:, None], x, _pad_row(x.shape[1], x.dtype))
      pos, neg = similarity.label_masks(labels, mask=mask)
      # PML's convert_to_weights: each row's loss times its share of the
      # mined tuples.
      losses = losses * miners_lib.element_weights(
          mine(bound, rows, pos, neg, key), anchors_only=spec.anchors_only)
    value = reducers_lib.reduce(
        reducers_lib.for_sub_loss(red, spec.sub_loss), losses,
        counted.astype(losses.dtype), labels, counted)
  if emb_reg is not None:
    value = value + reg_weights["embedding_reg_weight"] * _embedding_penalty(
        emb_reg, x, labels, mask)
  if w_reg is not None:
    w = learnable[spec.weights]
    rows = w.T if spec.transpose else w
    num = rows.shape[0]
    # PML's weight_reg_loss on W.t() / the proxies; its labels are the row
    # numbers.
    value = value + reg_weights["weight_reg_weight"] * _penalty(
        w_reg, rows, jnp.ones((num,), bool), jnp.arange(num))
  return value
