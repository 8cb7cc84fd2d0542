"""The pieces `build` (compose.py) composes a loss with, made from their
names or dicts: a distance, a reducer, a miner bound to its distance
(`BoundMiner`, run by `mine`) and a regularizer with its reducer.

Each piece is a name or `{"name": ..., **its_kwargs}` (a ConfigDict from
config.loss too) with PML's names and keywords; a keyword the piece does
not take, or a value it refuses, is a UserError naming what would work.

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
"weights": ...}` (a name or dict alone is the embedding regularizer:
`split_regularizers`).

Apart from compose.py, as both the composed losses there and the per-row
losses (row_losses.py) take these pieces.
"""

import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.losses import distances as distances_lib
from metricjax.losses import miners as miners_lib
from metricjax.losses import reducers as reducers_lib
from metricjax.losses import regularizers as regularizers_lib
from metricjax.losses.distances import Distance


def parse_piece(piece, what: str,
                where: str | None = None) -> tuple[str, dict[str, Any]]:
  """(name, kwargs) of a name or {"name": ..., **kwargs}; `where` names the
  config field in the error (default config.loss.<what>)."""
  if hasattr(piece, "to_dict"):  # a ConfigDict from config.loss
    piece = piece.to_dict()
  if isinstance(piece, str):
    return piece, {}
  if isinstance(piece, dict) and isinstance(piece.get("name"), str):
    kwargs = dict(piece)
    return kwargs.pop("name"), kwargs
  raise UserError(f"The {what} {piece!r} should be a name or a dict "
                  f"{{'name': ..., **kwargs}} ({where or 'config.loss.' + what}).")


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
  name, kwargs = parse_piece(piece, "distance")
  _construct(distances_lib.REGISTRY, name, kwargs, "distance")
  return distances_lib.REGISTRY[name](**kwargs)


def make_reducer(piece) -> reducers_lib.Reducer:
  if isinstance(piece, reducers_lib.Reducer):
    return piece
  name, kwargs = parse_piece(piece, "reducer")
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
  name, kwargs = parse_piece(piece, "miner")
  distance = kwargs.pop("distance", None)
  _construct(miners_lib.REGISTRY, name, kwargs, "miner")
  miner = miners_lib.REGISTRY[name]
  if miner.fixed_distance and distance is not None and parse_piece(
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


def make_regularizer(piece):
  """(penalty fn, its reducer) from a name or dict; the dict may name the
  regularizer's own "reducer" (default: PML's, mean but for
  sparse_centers' divisor)."""
  name, kwargs = parse_piece(piece, "regularizer")
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


def penalty(reg, rows, valid, labels) -> jax.Array:
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


def embedding_penalty(reg, x, labels, mask) -> jax.Array:
  # PML's embedding_reg_loss: already reduced, added as a sub-loss.
  valid = (jnp.ones(labels.shape, bool) if mask is None else mask)
  rows = x if mask is None else jnp.where(mask[:, None], x, 0.0)
  return penalty(reg, rows, valid, labels)


def split_regularizers(regularizer, weight_regularizer):
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
