"""REGISTRY: every loss a config can name, and what it consumes (the one
line a new loss adds; metricjax/losses/__init__.py says how)."""

import inspect
from typing import Any, Callable, NamedTuple

from metricjax.errors import UserError

from metricjax.losses.classification import softmax_cross_entropy
from metricjax.losses.circle import circle_loss
from metricjax.losses.contrastive import contrastive_loss
from metricjax.losses.contrastive import ntxent_loss
from metricjax.losses.fastap import fastap_loss
from metricjax.losses.instance import instance_loss
from metricjax.losses.intra_pair_variance import intra_pair_variance_loss
from metricjax.losses.lifted import generalized_lifted_structure_loss
from metricjax.losses.lifted import lifted_structure_loss
from metricjax.losses.manifold import init_manifold_loss
from metricjax.losses.manifold import manifold_loss
from metricjax.losses.margin import init_margin_loss
from metricjax.losses.margin import margin_loss
from metricjax.losses.margin_softmax import arcface_loss
from metricjax.losses.margin_softmax import cosface_loss
from metricjax.losses.margin_softmax import init_arcface_loss
from metricjax.losses.margin_softmax import init_cosface_loss
from metricjax.losses.margin_softmax import init_large_margin_softmax_loss
from metricjax.losses.margin_softmax import init_sphereface_loss
from metricjax.losses.margin_softmax import init_subcenter_arcface_loss
from metricjax.losses.margin_softmax import large_margin_softmax_loss
from metricjax.losses.margin_softmax import sphereface_loss
from metricjax.losses.margin_softmax import subcenter_arcface_loss
from metricjax.losses.multi_similarity import multi_similarity_loss
from metricjax.losses.nca import nca_loss
from metricjax.losses.p2sgrad import init_p2sgrad_loss
from metricjax.losses.p2sgrad import p2sgrad_loss
from metricjax.losses.pnp import pnp_loss
from metricjax.losses.proxy import init_normalized_softmax_loss
from metricjax.losses.proxy import init_proxy_anchor_loss
from metricjax.losses.proxy import init_proxy_nca_loss
from metricjax.losses.proxy import normalized_softmax_loss
from metricjax.losses.proxy import proxy_anchor_loss
from metricjax.losses.proxy import proxy_nca_loss
from metricjax.losses.ranked_list import ranked_list_loss
from metricjax.losses.shadow import shadow_loss
from metricjax.losses.shadow import shadow_margin_loss
from metricjax.losses.soft_triple import init_soft_triple_loss
from metricjax.losses.smooth_ap import smooth_ap_loss
from metricjax.losses.soft_triple import soft_triple_loss
from metricjax.losses.supcon import supcon_loss
from metricjax.losses.triplet import triplet_loss
from metricjax.losses.triplet import triplet_margin_loss
from metricjax.losses.tuplet import tuplet_margin_loss
from metricjax.losses.vicreg import vicreg_loss
from metricjax.losses.vse import vse_ranking_loss


class Loss(NamedTuple):
  fn: Callable
  # What it consumes: "embedding" or "logits" of a labelled batch,
  # "triplets": fn(anchor, positive, negative, **kw) on explicit triplets,
  # "image_text": fn(image_emb, text_emb, **kw), row i a matching pair,
  # "views": fn(embeddings, ref_emb, **kw), row i of each a view of example i
  # (self-supervised), or "unlabelled": fn(embeddings, meta_classes=None, *,
  # key=None, **kw), rows without labels (manifold).
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
    "large_margin_softmax": Loss(large_margin_softmax_loss, "embedding",
                                 init_large_margin_softmax_loss),
    "sphereface": Loss(sphereface_loss, "embedding", init_sphereface_loss),
    "p2sgrad": Loss(p2sgrad_loss, "embedding", init_p2sgrad_loss),
    "nca": Loss(nca_loss, "embedding"),
    "smooth_ap": Loss(smooth_ap_loss, "embedding"),
    "instance": Loss(instance_loss, "embedding"),
    "manifold": Loss(manifold_loss, "unlabelled", init_manifold_loss),
    "pnp": Loss(pnp_loss, "embedding"),
    "ranked_list": Loss(ranked_list_loss, "embedding"),
    "vicreg": Loss(vicreg_loss, "views"),
    # "self_supervised" wraps build's losses (compose.py imports this
    # module): losses/__init__.py registers it.
}


# PML's losses that supply a divisor (their default reducer is divisor).
DIVISOR_LOSSES = ("margin", "proxy_anchor")

# Keyword arguments a training task fills in, not hyper-parameters.
_PLUMBING = frozenset(("mask", "key", "miner_weights", "ref_embeddings",
                       "ref_labels", "ref_mask", "self_index"))


def check_loss_hyperparameters(name: str, loss: Loss,
                               kwargs: dict[str, Any]) -> None:
  """A UserError naming what `config.loss.kwargs` has that `loss` (named
  `name`) does not take (and what it does take)."""
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
