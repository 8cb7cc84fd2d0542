"""`build` (compose.py) for the per-row losses (ROW_LOSSES): the losses
with learnable class vectors and NCA / Smooth-AP, composed as PML lets them.

Their per-row values (`*_per_row`), weighted by a miner as PML's
convert_to_weights does (how often a row occurs in the mined tuples, over
the largest count), then reduced by any element reducer (their sub-loss is
"loss", Smooth-AP's "ap_loss"); nca takes any distance, the others only the
one PML asserts. The built fn takes the learnable arrays as keywords:
`build("cosface", miner="multi_similarity")(x, labels, W=W)`. A weight
regularizer (pieces.py) acts on their class vectors.

Apart from compose.py, as these losses share no distance matrix, core or
reference set with the pair and triplet losses there, only the pieces.
"""

import functools
from typing import Callable, NamedTuple

import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.losses import miners as miners_lib
from metricjax.losses import reducers as reducers_lib
from metricjax.losses.cores import pad_row
from metricjax.losses.distances import Distance
from metricjax.losses.margin_softmax import arcface_per_row
from metricjax.losses.margin_softmax import cosface_per_row
from metricjax.losses.margin_softmax import large_margin_softmax_per_row
from metricjax.losses.margin_softmax import sphereface_per_row
from metricjax.losses.margin_softmax import subcenter_arcface_per_row
from metricjax.losses.fastap import fastap_per_row
from metricjax.losses.nca import nca_per_row
from metricjax.losses.pieces import embedding_penalty
from metricjax.losses.pieces import make_distance
from metricjax.losses.pieces import make_miner
from metricjax.losses.pieces import make_reducer
from metricjax.losses.pieces import make_regularizer
from metricjax.losses.pieces import mine
from metricjax.losses.pieces import parse_piece
from metricjax.losses.pieces import penalty
from metricjax.losses.proxy import normalized_softmax_per_row
from metricjax.losses.proxy import proxy_nca_per_row
from metricjax.losses.registry import check_loss_hyperparameters
from metricjax.losses.registry import DIVISOR_LOSSES
from metricjax.losses.registry import REGISTRY
from metricjax.losses.smooth_ap import smooth_ap_per_row
from metricjax.losses.soft_triple import soft_triple_per_row
from metricjax.ops import similarity


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
  # Where per_row is None: the keyword through which the loss takes a
  # miner's row weights itself (proxy_anchor's, inside its exponents).
  miner_keyword: str | None = None


ROW_LOSSES: dict[str, RowLoss] = {
    "large_margin_softmax": RowLoss(large_margin_softmax_per_row, "W", True,
                                    ("cosine",)),
    "sphereface": RowLoss(sphereface_per_row, "W", True, ("cosine",)),
    "cosface": RowLoss(cosface_per_row, "W", True, ("cosine",)),
    "arcface": RowLoss(arcface_per_row, "W", True, ("cosine",)),
    "subcenter_arcface": RowLoss(subcenter_arcface_per_row, "W", True,
                                 ("cosine",)),
    "normalized_softmax": RowLoss(normalized_softmax_per_row, "W", True,
                                  any_distance=True),
    "soft_triple": RowLoss(soft_triple_per_row, "fc", True, ("cosine",)),
    "proxy_nca": RowLoss(proxy_nca_per_row, "proxies", anchors_only=True,
                         any_distance=True),
    "proxy_anchor": RowLoss(None, "proxies", refusal=(
        "proxy_anchor takes no reducer but its own divisor (PML divides its "
        "proxies' terms by its own divisors)"),
                            miner_keyword="miner_weights"),
    "fastap": RowLoss(fastap_per_row),
    "nca": RowLoss(nca_per_row, any_distance=True),
    "smooth_ap": RowLoss(smooth_ap_per_row, distances=("cosine",),
                         sub_loss="ap_loss"),
    "p2sgrad": RowLoss(None, refusal=(
        "p2sgrad takes no miner (PML raises on an indices_tuple) and no "
        "reducer (its value is already reduced: PML's reducer changes "
        "nothing)")),
}


def build_row_loss(name, distance, miner, reducer, regularizer,
                   weight_regularizer, hyperparameters,
                   check_reducer: Callable[[str, reducers_lib.Reducer], None]):
  """build() for ROW_LOSSES; check_reducer is compose's (which imports
  this module), called where build's own checks would call it."""
  spec = ROW_LOSSES[name]
  if (name in DIVISOR_LOSSES and reducer is not None
      and parse_piece(reducer, "reducer") == ("divisor", {})):
    reducer = None  # Its default: the loss divides by its own divisors.
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
  if spec.per_row is None and ((miner is not None and not spec.miner_keyword)
                               or reducer is not None):
    raise UserError(f"{spec.refusal}; drop config.loss.reducer"
                    f"{'' if spec.miner_keyword else ' and config.loss.miner'}.")
  dist = None
  if distance is not None:
    d_spec = (None, None) if isinstance(distance, Distance) else parse_piece(
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
  check_reducer(name, red)
  bound = None if miner is None else make_miner(miner)
  emb_reg = None if regularizer is None else make_regularizer(regularizer)
  w_reg = (None if weight_regularizer is None
           else make_regularizer(weight_regularizer))
  return functools.partial(_row_composed, name, spec, dist, bound, red,
                           emb_reg, w_reg, tuple(sorted(hp.items())),
                           tuple(sorted(extra.items())))


def _miner_weights(bound, x, labels, mask, key, anchors_only):
  """(N,) PML's convert_to_weights of what the miner mines on the batch."""
  rows = x if mask is None else jnp.where(
      mask[:, None], x, pad_row(x.shape[1], x.dtype))
  pos, neg = similarity.label_masks(labels, mask=mask)
  return miners_lib.element_weights(mine(bound, rows, pos, neg, key),
                                    anchors_only=anchors_only)


def _row_composed(name, spec: RowLoss, dist, bound, red, emb_reg, w_reg, hp,
                  reg_weights, x, labels, *, mask=None, key=None,
                  **learnable):
  hp, reg_weights = dict(hp), dict(reg_weights)
  if spec.per_row is None:
    if bound is not None:
      hp[spec.miner_keyword] = _miner_weights(bound, x, labels, mask, key,
                                              spec.anchors_only)
    value = REGISTRY[name].fn(x, labels, mask=mask, **learnable, **hp)
  else:
    if spec.any_distance:
      hp["distance"] = dist
    losses, counted = spec.per_row(x, labels, mask=mask, **learnable, **hp)
    if bound is not None:
      # PML's convert_to_weights: each row's loss times its share of the
      # mined tuples.
      losses = losses * _miner_weights(bound, x, labels, mask, key,
                                       spec.anchors_only)
    value = reducers_lib.reduce(
        reducers_lib.for_sub_loss(red, spec.sub_loss), losses,
        counted.astype(losses.dtype), labels, counted)
  if emb_reg is not None:
    value = value + reg_weights["embedding_reg_weight"] * embedding_penalty(
        emb_reg, x, labels, mask)
  if w_reg is not None:
    w = learnable[spec.weights]
    rows = w.T if spec.transpose else w
    num = rows.shape[0]
    # PML's weight_reg_loss on W.t() / the proxies; its labels are the row
    # numbers.
    value = value + reg_weights["weight_reg_weight"] * penalty(
        w_reg, rows, jnp.ones((num,), bool), jnp.arange(num))
  return value
