"""Reducers: a loss's per-element, per-pair or per-triplet values to a
scalar, as pytorch-metric-learning's reducers.

Mined pairs and triplets are masks here, not lists (see miners.py), so a
reducer takes the values with their multiplicities `weights` (0: absent; a
pair listed twice by a triplet miner counts twice, as in PML's lists). Every
reducer but per_anchor is "keep some entries, then sum or average them",
which a triplet loss accumulates anchor by anchor in O(N M) memory
(`sum_count` then `finish`).

To add one: a function returning `Reducer`, and one REGISTRY line.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class Reducer(NamedTuple):
  name: str
  # losses -> bool, the entries averaged (ThresholdReducer's filter); None:
  # all of them.
  keep: Callable[[jax.Array], jax.Array] | None = None
  divide: bool = True  # the mean of the kept entries, else their sum
  class_weights: Any = None  # (C,): each entry scaled by its anchor's class'
  inner: Any = None  # per_anchor: the Reducer of the anchors' means
  sub: Any = None  # multiple: {sub-loss name: Reducer}
  default: Any = None  # multiple: for the sub-losses not in sub


def mean() -> Reducer:
  return Reducer("mean")


def sum_() -> Reducer:  # pylint: disable=invalid-name
  return Reducer("sum", divide=False)


def threshold(*, low: float | None = None,
              high: float | None = None) -> Reducer:
  """ThresholdReducer: the mean of the losses in (low, high), 0 if none."""
  if low is None and high is None:
    raise ValueError("threshold needs low or high")

  def keep(losses):
    k = jnp.ones(losses.shape, bool)
    if low is not None:
      k &= losses > low
    if high is not None:
      k &= losses < high
    return k
  return Reducer("threshold", keep=keep)


def avg_non_zero() -> Reducer:
  """AvgNonZeroReducer: ThresholdReducer(low=0)."""
  return threshold(low=0.0)._replace(name="avg_non_zero")


def class_weighted(*, weights) -> Reducer:
  """ClassWeightedReducer: mean of loss x weights[label of the anchor].

  PML's equals this where a loss's values are 1-D (contrastive, NT-Xent,
  triplet margin); the (N, 1) values of its logsumexp-based losses (multi-
  similarity, circle, lifted) broadcast against the (N,) weights there into
  mean(losses) x mean(weights[labels]), which is not what it documents.
  """
  return Reducer("class_weighted", class_weights=jnp.asarray(weights,
                                                             jnp.float32))


def per_anchor(*, reducer: Reducer | None = None) -> Reducer:
  """PerAnchorReducer: each anchor's mean over its distinct pairs (0 for an
  anchor without pairs), then `reducer` (default mean) over the anchors."""
  return Reducer("per_anchor", inner=mean() if reducer is None else reducer)


def multiple(*, reducers: dict[str, Reducer],
             default_reducer: Reducer | None = None) -> Reducer:
  """MultipleReducers: one reducer per sub-loss (e.g. contrastive's pos_loss
  and neg_loss), the default (mean) for the others; their sum."""
  return Reducer("multiple", sub=dict(reducers),
                 default=mean() if default_reducer is None else default_reducer)


def divisor() -> Reducer:
  return Reducer("divisor")


def do_nothing() -> Reducer:
  return Reducer("do_nothing")


def for_sub_loss(reducer: Reducer, name: str) -> Reducer:
  """The reducer of one sub-loss, as PML's MultipleReducers picks it."""
  if reducer.name == "multiple":
    return reducer.sub.get(name, reducer.default)
  return reducer


def sum_count(reducer: Reducer, losses: jax.Array, weights: jax.Array,
              labels: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(weighted sum of the kept losses, their count); labels: each entry's
  anchor label, broadcast with losses (class_weighted only)."""
  keep = weights > 0
  if reducer.keep is not None:
    keep &= reducer.keep(losses)
  w = jnp.where(keep, weights, 0.0)
  scaled = w if reducer.class_weights is None else (
      w * reducer.class_weights[labels])
  return jnp.sum(jnp.where(keep, losses * scaled, 0.0)), jnp.sum(w)


def finish(reducer: Reducer, total: jax.Array, count: jax.Array) -> jax.Array:
  # No kept entry: 0, as PML's zero_loss (count is a whole number).
  return total / jnp.maximum(count, 1.0) if reducer.divide else total


def reduce(reducer: Reducer, losses: jax.Array, weights: jax.Array,
           labels: jax.Array | None = None,
           row_valid: jax.Array | None = None) -> jax.Array:
  """A sub-loss's scalar: losses (N,) per element or (N, M) per pair.

  labels: (N,) the anchors' labels; row_valid: (N,) the non-padding anchors
  (per_anchor averages over them).
  """
  if reducer.name == "per_anchor":
    if losses.ndim == 2:
      present = weights > 0  # distinct pairs, whatever their multiplicity
      num = jnp.sum(present, axis=1)
      losses = jnp.sum(jnp.where(present, losses, 0.0), axis=1) / (
          jnp.maximum(num, 1))
      weights = (jnp.ones(losses.shape) if row_valid is None
                 else row_valid.astype(losses.dtype))
    return reduce(reducer.inner, losses, weights, labels, row_valid)
  if labels is not None and losses.ndim == 2:
    labels = jnp.broadcast_to(labels[:, None], losses.shape)
  return finish(reducer, *sum_count(reducer, losses, weights, labels))


REGISTRY: dict[str, Callable[..., Reducer]] = {
    "mean": mean,
    "sum": sum_,
    "avg_non_zero": avg_non_zero,
    "threshold": threshold,
    "class_weighted": class_weighted,
    "per_anchor": per_anchor,
    "multiple": multiple,
    "divisor": divisor,
    "do_nothing": do_nothing,
}
