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
multiplicity in PML's index lists, a triplet loss walks the anchors.

Random miners (uniform_histogram, distance_weighted) make the loss take
`key=`, a jax PRNG key.

Not here yet: weight regularizers (the composable losses have no weights),
a reference set (ref_emb; cross-batch memory is
`losses.xbm_loss`), TripletMarginLoss's swap and triplets_per_anchor, the
do_nothing reducer (a training step needs a scalar) and PML's other losses
(they build with their defaults from REGISTRY, without pieces).

Deliberate differences from PML:
- as in multi_similarity.py, PML's GenericPairLoss returns 0 whenever at
  most one positive and one negative pair were mined in all; here such a
  batch gets the formula's value;
- per_anchor with a miner that lists a pair more than once (a triplet miner
  feeding a pair loss): PML's value counts the pair once and its gradient
  once per listing; here the gradient is the value's;
- class_weighted on losses whose PML values are (N, 1) (see reducers.py),
  and per_anchor on lifted_structure / tuplet_margin (PML fails on their
  (P, 1) values): here the documented reduction;
- HDC keeps every pair tied with its k-th value (miners.hdc).
"""

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.errors import UserError
from metricjax.losses import distances as distances_lib
from metricjax.losses import miners as miners_lib
from metricjax.losses import pairs
from metricjax.losses import reducers as reducers_lib
from metricjax.losses import regularizers as regularizers_lib
from metricjax.losses import triplet as triplet_lib
from metricjax.losses.distances import Distance, margin
from metricjax.losses.registry import check_loss_hyperparameters
from metricjax.losses.registry import REGISTRY
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


class Composable(NamedTuple):
  core: Callable | None  # None: the triplet loss (see _triplet_margin)
  default_distance: Callable[[], Distance]
  default_reducer: Callable[[], reducers_lib.Reducer]
  # PML asserts this distance (assert_distance_type); None: any.
  only_distance: str | None = None


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


def mine(bound: BoundMiner, x, pos, neg, key=None):
  """The miner's output on rows x (no gradient, as PML mines)."""
  x = jax.lax.stop_gradient(x)
  extra = {"x": x} if bound.takes_x else {}
  if bound.random:
    if key is None:
      raise ValueError(f"miner {bound.name!r} is random: pass key=")
    extra["key"] = key
  return bound.fn(bound.distance.fn(x, x), pos, neg, bound.distance, **extra)


def _check_reducer(name: str, reducer: reducers_lib.Reducer) -> None:
  subs = ([reducer.default, *reducer.sub.values()]
          if reducer.name == "multiple" else [reducer])
  for r in subs:
    if r.name == "divisor":
      raise UserError(
          f"The divisor reducer needs a loss that supplies a divisor, and "
          f"{name!r} does not (pytorch-metric-learning raises a KeyError "
          "there too). Use mean, sum, avg_non_zero, threshold, "
          "class_weighted, per_anchor or multiple (config.loss.reducer).")
    if r.name == "do_nothing":
      raise UserError(
          "The do_nothing reducer returns the unreduced losses, which "
          "metricjax's losses (one scalar to differentiate) do not; use "
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
    elif "epsilon" in hyperparameters and miner is not None:
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
          regularizer=None, **hyperparameters) -> Callable[..., jax.Array]:
  """The pure loss `fn(x, labels, *, mask=None, key=None) -> scalar`
  (key: a jax PRNG key, needed by the random miners only).

  Args:
    name: the loss, the snake case of PML's class without `Loss`, or one of
      today's names (REGISTRY), e.g. "ms", "triplet".
    distance, miner, reducer: a name or {"name": ..., **kwargs}; None is the
      loss's PML default (no miner).
    regularizer: an embedding regularizer (lp, zero_mean,
      center_invariant), as PML's embedding_regularizer; its weight is the
      hyper-parameter embedding_reg_weight (default 1).
    **hyperparameters: the loss's keywords, PML's names.

  Raises:
    UserError: an unknown piece or keyword, or a combination PML refuses.
  """
  if name in ALIASES:
    distance, miner, hyperparameters = _legacy(name, distance, miner,
                                               hyperparameters)
    name = ALIASES[name]
  if name not in COMPOSABLE:
    if name not in REGISTRY:
      raise UserError(
          f"Unknown loss {name!r} (config.loss.name). Known losses: "
          f"{', '.join(sorted(set(REGISTRY) | set(COMPOSABLE)))}.")
    given = [w for w, p in (("distance", distance), ("miner", miner),
                            ("reducer", reducer),
                            ("regularizer", regularizer)) if p is not None]
    if given:
      why = _WHY_NO_PIECES.get(name, "it computes its own")
      raise UserError(
          f"Loss {name!r} takes no {' or '.join(given)} here: {why}. The "
          "losses that compose with a distance, a miner and a "
          f"reducer are {', '.join(sorted(COMPOSABLE))} (and the aliases "
          f"{', '.join(sorted(ALIASES))}); or drop config.loss.{given[0]}.")
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
  dist = spec.default_distance() if distance is None else make_distance(
      distance)
  red = spec.default_reducer() if reducer is None else make_reducer(reducer)
  _check_reducer(name, red)
  bound = None if miner is None else make_miner(miner)
  reg = None if regularizer is None else make_regularizer(regularizer)
  return functools.partial(_composed, name, spec, dist, bound, red, reg,
                           tuple(sorted(hp.items())))


def make_regularizer(piece):
  """(per-row penalty fn, its reducer) from a name or dict; the dict may name
  the regularizer's own "reducer" (PML's default: mean)."""
  name, kwargs = _spec(piece, "regularizer")
  reducer = kwargs.pop("reducer", None)
  _construct(regularizers_lib.REGISTRY, name, kwargs, "regularizer")
  return (regularizers_lib.REGISTRY[name](**kwargs),
          reducers_lib.mean() if reducer is None else make_reducer(reducer))


def _pad_row(dim: int, dtype) -> jax.Array:
  # Padding may hold anything (NaN): a fixed non-constant row keeps every
  # distance (SNR's variance too) and its gradient finite.
  return jnp.arange(1, dim + 1, dtype=dtype)


def _composed(name, spec: Composable, dist: Distance, bound, red, reg, hp,
              x, labels, *, mask=None, key=None, **learnable):
  if learnable:
    raise TypeError(f"loss {name!r} has no learnable {sorted(learnable)}")
  hp = dict(hp)
  reg_weight = hp.pop("embedding_reg_weight", None)
  value = _loss_value(spec, dist, bound, red, hp, x, labels, mask, key)
  if reg is None:
    return value
  # PML's embedding_reg_loss: already reduced, added as a sub-loss.
  fn, reducer = reg
  valid = (jnp.ones(labels.shape, bool) if mask is None else mask)
  rows = x if mask is None else jnp.where(mask[:, None], x, 0.0)
  penalty = reducers_lib.reduce(reducer, fn(rows, valid),
                                valid.astype(x.dtype), labels, valid)
  return value + reg_weight * penalty


def _loss_value(spec, dist, bound, red, hp, x, labels, mask, key):
  if mask is not None:
    x = jnp.where(mask[:, None], x, _pad_row(x.shape[1], x.dtype))
  pos, neg = similarity.label_masks(labels, mask=mask)
  row_w = (jnp.ones(labels.shape, x.dtype) if mask is None
           else mask.astype(x.dtype))
  mat = dist.fn(x, x)
  mined = None
  if bound is not None:
    mined = mine(bound, x, pos, neg, key)
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
  return sum(reducers_lib.reduce(reducers_lib.for_sub_loss(red, k), losses,
                                 weights, labels, row_w)
             for k, (losses, weights) in sub_losses.items())
