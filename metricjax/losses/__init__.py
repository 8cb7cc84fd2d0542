"""Losses: pure functions of arrays, one family per file.

To add a loss: write it in its own file with the signature
`fn(x, labels, *, mask=None, **hyperparameters) -> scalar` and add one line
to REGISTRY saying what it consumes: "embedding" or "logits" of a labelled
batch; "triplets" for Siamese losses `fn(anchor, positive, negative, **kw)`;
"image_text" for `fn(image_emb, text_emb, **kw)` on matching rows (the
caption task). Configs select it with `config.loss.name` and pass
`config.loss.kwargs`.

`build` (compose.py) composes the pair and triplet losses with a distance
(distances.py), a miner (miners.py) and a reducer (reducers.py), as
pytorch-metric-learning does: `build("contrastive", miner="multi_similarity")`.

A loss with learnable parameters (proxies, class weights, margins) takes
them as keyword arrays, in pytorch-metric-learning's layout, and registers
an `init(rng, *, num_classes, embedding_dim, **hyperparameters)` returning
the dict of exactly those keyword arrays (PML's initialisation, float32).
"""

import inspect
from typing import Any, Callable, NamedTuple

from metricjax.errors import UserError
from metricjax.losses.classification import softmax_cross_entropy
from metricjax.losses.circle import circle_loss
from metricjax.losses.compose import build
from metricjax.losses.compose import COMPOSABLE
from metricjax.losses.contrastive import contrastive_loss
from metricjax.losses.contrastive import ntxent_loss
from metricjax.losses.fastap import fastap_loss
from metricjax.losses.intra_pair_variance import intra_pair_variance_loss
from metricjax.losses.lifted import generalized_lifted_structure_loss
from metricjax.losses.lifted import lifted_structure_loss
from metricjax.losses.margin import init_margin_loss
from metricjax.losses.margin import margin_loss
from metricjax.losses.margin_softmax import arcface_loss
from metricjax.losses.margin_softmax import cosface_loss
from metricjax.losses.margin_softmax import init_arcface_loss
from metricjax.losses.margin_softmax import init_cosface_loss
from metricjax.losses.margin_softmax import init_subcenter_arcface_loss
from metricjax.losses.margin_softmax import subcenter_arcface_loss
from metricjax.losses.multi_similarity import multi_similarity_loss
from metricjax.losses.proxy import init_normalized_softmax_loss
from metricjax.losses.proxy import init_proxy_anchor_loss
from metricjax.losses.proxy import init_proxy_nca_loss
from metricjax.losses.proxy import normalized_softmax_loss
from metricjax.losses.proxy import proxy_anchor_loss
from metricjax.losses.proxy import proxy_nca_loss
from metricjax.losses.shadow import shadow_loss
from metricjax.losses.shadow import shadow_margin_loss
from metricjax.losses.soft_triple import init_soft_triple_loss
from metricjax.losses.soft_triple import soft_triple_loss
from metricjax.losses.supcon import supcon_loss
from metricjax.losses.triplet import triplet_loss
from metricjax.losses.triplet import triplet_margin_loss
from metricjax.losses.tuplet import tuplet_margin_loss
from metricjax.losses.vse import vse_ranking_loss


class Loss(NamedTuple):
  fn: Callable
  # What it consumes: "embedding" or "logits" of a labelled batch,
  # "triplets": fn(anchor, positive, negative, **kw) on explicit triplets,
  # or "image_text": fn(image_emb, text_emb, **kw), row i a matching pair.
  input: str
  # Learnable parameters' initialiser, (rng, *, num_classes, embedding_dim,
  # **hyperparameters) -> {keyword: array}; None: the loss has none.
  init: Callable | None = None


REGISTRY: dict[str, Loss] = {
    "ce": Loss(softmax_cross_entropy, "logits"),
    "ms": Loss(multi_similarity_loss, "embedding"),
    "triplet": Loss(triplet_margin_loss, "embedding"),
    "shadow": Loss(shadow_margin_loss, "embedding"),
    "contrastive": Loss(contrastive_loss, "embedding"),
    "ntxent": Loss(ntxent_loss, "embedding"),
    "triplet_explicit": Loss(triplet_loss, "triplets"),
    "shadow_explicit": Loss(shadow_loss, "triplets"),
    "vse": Loss(vse_ranking_loss, "image_text"),
    "proxy_anchor": Loss(proxy_anchor_loss, "embedding",
                         init_proxy_anchor_loss),
    "proxy_nca": Loss(proxy_nca_loss, "embedding", init_proxy_nca_loss),
    "normalized_softmax": Loss(normalized_softmax_loss, "embedding",
                               init_normalized_softmax_loss),
    "cosface": Loss(cosface_loss, "embedding", init_cosface_loss),
    "arcface": Loss(arcface_loss, "embedding", init_arcface_loss),
    "subcenter_arcface": Loss(subcenter_arcface_loss, "embedding",
                              init_subcenter_arcface_loss),
    "circle": Loss(circle_loss, "embedding"),
    "supcon": Loss(supcon_loss, "embedding"),
    "lifted_structure": Loss(lifted_structure_loss, "embedding"),
    "generalized_lifted_structure": Loss(generalized_lifted_structure_loss,
                                         "embedding"),
    "margin": Loss(margin_loss, "embedding", init_margin_loss),
    "soft_triple": Loss(soft_triple_loss, "embedding", init_soft_triple_loss),
    "fastap": Loss(fastap_loss, "embedding"),
    "tuplet_margin": Loss(tuplet_margin_loss, "embedding"),
    "intra_pair_variance": Loss(intra_pair_variance_loss, "embedding"),
}


def get_loss(name: str) -> Loss:
  if name in REGISTRY:
    return REGISTRY[name]
  if name in COMPOSABLE:  # PML's names only `build` knows, e.g. triplet_margin
    return Loss(build(name), "embedding")
  raise UserError(
      f"Unknown loss {name!r} (config.loss.name). Known losses: "
      f"{', '.join(sorted(set(REGISTRY) | set(COMPOSABLE)))}. To add one, "
      "write it in metricjax/losses/ and register it in "
      "metricjax/losses/__init__.py.")


def composed_pieces(loss_config) -> dict[str, Any]:
  """The distance / miner / reducer / regularizer `config.loss` sets (None,
  "" or {} is unset), as `build`'s keywords."""
  pieces = {}
  for key in ("distance", "miner", "reducer", "regularizer"):
    value = loss_config.get(key)
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    if value:
      pieces[key] = value
  return pieces


# Keyword arguments a training task fills in, not hyper-parameters.
_PLUMBING = frozenset(("mask", "ref_embeddings", "ref_labels", "ref_mask",
                       "self_index"))


def check_hyperparameters(name: str, kwargs: dict[str, Any]) -> None:
  """A UserError naming what `config.loss.kwargs` has that loss `name` does
  not take (and what it does take)."""
  loss = get_loss(name)
  # Keywords without a default are the learnable arrays (proxies, W, ...).
  keywords = [p.name for p in inspect.signature(loss.fn).parameters.values()
              if p.kind == inspect.Parameter.KEYWORD_ONLY
              and p.default is not inspect.Parameter.empty]
  learnable = set(inspect.signature(loss.init).parameters) if loss.init else ()
  taken = [k for k in keywords if k not in _PLUMBING]
  # num_classes sizes per-class parameters (e.g. None: one global beta).
  unknown = sorted(set(kwargs) - set(taken) - ({"num_classes"} & set(learnable)))
  if unknown:
    raise UserError(
        f"Loss {name!r} takes no hyper-parameter {', '.join(unknown)} "
        f"(config.loss.kwargs). It takes: {', '.join(taken) or 'none'}.")
