"""`build`: a pair or triplet loss composed with a distance, a miner and a
reducer, as pytorch-metric-learning composes them.

`build("contrastive", miner={"name": "multi_similarity", "epsilon": 0.1})`
is PML's `ContrastiveLoss()(emb, labels, MultiSimilarityMiner(epsilon=0.1)(
emb, labels))`; each piece is a name or `{"name": ..., **its_kwargs}` with
PML's names and keywords (a miner's dict may name its own "distance"), and
None is that loss's PML default (its distance, its reducer, no miner).

Here: the entry, which checks a request against what PML accepts and binds
its pieces (pieces.py: distance, miner, reducer, regularizers), and the
composed loss it returns, which runs the loss's core (cores.py) on one
(N, M) distance matrix, the batch against itself or against a reference set
(`References`: a cross-batch memory, xbm.py), and reduces each sub-loss
(contrastive's pos_loss and neg_loss) and sums them, as PML's
MultipleReducers. The losses with learnable class vectors and NCA /
Smooth-AP (ROW_LOSSES) compose too, with a miner, a reducer and weight
regularizers (row_losses.py). `ALIASES`: today's short names ("ms",
"triplet") and their welded-in options.

Random miners (uniform_histogram, distance_weighted) make the loss take
`key=`, a jax PRNG key.

A reference set (ref_embeddings, ref_labels, ref_mask, self_index: PML's
ref_emb with CrossBatchMemory's self comparisons removed) is what
`losses.xbm_loss` passes; `takes_references` says which losses and miners
take one. The do_nothing reducer returns a pair loss's unreduced losses.

Not here yet: TripletMarginLoss's triplets_per_anchor, a
reference set for the losses that need the whole batch (angular, npairs,
histogram, ...), and a distance or reducer other than PML's default for
instance, ranked_list and manifold.

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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.losses import miners as miners_lib
from metricjax.losses import pairs
from metricjax.losses import reducers as reducers_lib
from metricjax.losses.cores import Batch
from metricjax.losses.cores import Composable
from metricjax.losses.cores import COMPOSABLE
from metricjax.losses.cores import pad_row
from metricjax.losses.cores import triplet_margin
from metricjax.losses.cores import TRIPLET_HYPERPARAMETERS
from metricjax.losses.cores import WHY_NO_PIECES
from metricjax.losses.distances import Distance
from metricjax.losses.pieces import BoundMiner
from metricjax.losses.pieces import embedding_penalty
from metricjax.losses.pieces import make_distance
from metricjax.losses.pieces import make_miner
from metricjax.losses.pieces import make_reducer
from metricjax.losses.pieces import make_regularizer
from metricjax.losses.pieces import mine
from metricjax.losses.pieces import parse_piece
from metricjax.losses.pieces import split_regularizers
from metricjax.losses.registry import check_loss_hyperparameters
from metricjax.losses.registry import DIVISOR_LOSSES
from metricjax.losses.registry import REGISTRY
from metricjax.losses.row_losses import build_row_loss
from metricjax.losses.row_losses import ROW_LOSSES
from metricjax.ops import similarity


# Today's names and their welded-in options, kept for configs.
ALIASES = {"ms": "multi_similarity", "triplet": "triplet_margin"}




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
  regularizer, weight_regularizer = split_regularizers(regularizer,
                                                       weight_regularizer)
  if name in ROW_LOSSES:
    return build_row_loss(name, distance, miner, reducer, regularizer,
                          weight_regularizer, hyperparameters, _check_reducer)
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
    if name in DIVISOR_LOSSES and reducer is not None and parse_piece(
        reducer, "reducer") == ("divisor", {}):
      reducer = None  # Its default: the loss divides by its own divisor.
    given = [w for w, p in (("distance", distance), ("miner", miner),
                            ("reducer", reducer),
                            ("regularizer", regularizer)) if p is not None]
    if given:
      why = WHY_NO_PIECES.get(name, "it computes its own")
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
    if hp["triplets_per_anchor"] != "all":
      raise UserError("triplet_margin's triplets_per_anchor is not "
                      "supported yet: leave "
                      "triplets_per_anchor='all' (use a miner to choose "
                      "triplets).")
  if distance is not None and spec.only_distance is not None:
    d_name, _ = parse_piece(distance, "distance") if not isinstance(
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
    _, kwargs = parse_piece(distance, "distance")
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


class References(NamedTuple):
  """A reference set the anchors are compared with instead of themselves
  (PML's ref_emb, ref_labels): a cross-batch memory (losses/xbm.py)."""
  embeddings: jax.Array  # (M, D)
  labels: jax.Array  # (M,)
  mask: jax.Array | None  # (M,) bool, the filled slots
  self_index: jax.Array | None  # (N,) each anchor's own slot, -1: none


# Miners that mine the batch against itself only (the angular miner's
# centres are of batch rows).
MINERS_WITHOUT_REFERENCES = ("angular",)


def takes_references(name: str, miner: str | None = None) -> bool:
  """Whether loss `name` (with that miner) takes a reference set, e.g. a
  cross-batch memory."""
  name = ALIASES.get(name, name)
  return (name in COMPOSABLE and not COMPOSABLE[name].takes_batch
          and miner not in MINERS_WITHOUT_REFERENCES)


def _composed(name, spec: Composable, dist: Distance, bound: BoundMiner | None,
              red, reg, hp, x, labels, *, mask=None, key=None,
              ref_embeddings=None, ref_labels=None, ref_mask=None,
              self_index=None, **learnable):
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
  return value + reg_weight * embedding_penalty(reg, x, labels, mask)


def _loss_value(spec, dist, bound, red, hp, x, labels, mask, key, refs):
  pad = pad_row(x.shape[1], x.dtype)
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
    return triplet_margin(mat, t, dist, labels,
                          reducers_lib.for_sub_loss(red, "loss"),
                          margin_=hp["margin"],
                          smooth_loss=hp["smooth_loss"], swap=hp["swap"])
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
