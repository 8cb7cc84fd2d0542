"""Losses: pure functions of arrays, one family per file.

To add a loss: write it in its own file with the signature
`fn(x, labels, *, mask=None, **hyperparameters) -> scalar` and add one line
to REGISTRY (registry.py) saying what it consumes: "embedding" or "logits" of a labelled
batch; "triplets" for Siamese losses `fn(anchor, positive, negative, **kw)`;
"image_text" for `fn(image_emb, text_emb, **kw)` on matching rows (the
caption task); "views" for `fn(embeddings, ref_emb, **kw)`, two views of each
example (self-supervised: `vicreg`, `self_supervised`); "unlabelled" for
`fn(embeddings, meta_classes=None, *, key=None, **kw)` (`manifold`). Configs
select it with `config.loss.name` and pass `config.loss.kwargs`.

`build` (compose.py) composes the pair and triplet losses with a distance
(distances.py), a miner (miners.py) and a reducer (reducers.py), as
pytorch-metric-learning does: `build("contrastive", miner="multi_similarity")`;
the per-row losses (margin softmax, proxies, NCA, Smooth-AP) with a miner,
a reducer and PML's weight regularizers: `build("cosface",
miner="multi_similarity", weight_regularizer="regular_face")(x, labels,
W=W)`.

A loss with learnable parameters (proxies, class weights, margins) takes
them as keyword arrays, in pytorch-metric-learning's layout, and registers
an `init(rng, *, num_classes, embedding_dim, **hyperparameters)` returning
the dict of exactly those keyword arrays (PML's initialisation, float32).
"""

from metricjax.errors import UserError
from metricjax.losses.compose import ALIASES
from metricjax.losses.compose import build
from metricjax.losses.compose import COMPOSABLE
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
from metricjax.losses.self_supervised import self_supervised
from metricjax.losses.self_supervised import self_supervised_loss
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
from metricjax.losses import configured
from metricjax.losses.configured import get_loss
from metricjax.losses import registry
from metricjax.losses.registry import Loss
from metricjax.losses.registry import REGISTRY

# Above compose (it wraps build's losses), so registered here, not in
# registry.py.
REGISTRY["self_supervised"] = Loss(self_supervised_loss, "views")

