"""Losses: pure functions of arrays, one family per file.

To add a loss: write it in its own file with the signature
`fn(x, labels, *, mask=None, **hyperparameters) -> scalar` and add one line
to REGISTRY saying what it consumes: "embedding" or "logits" of a labelled
batch; "triplets" for Siamese losses `fn(anchor, positive, negative, **kw)`;
"image_text" for `fn(image_emb, text_emb, **kw)` on matching rows (the
caption task). Configs select it with `config.loss.name` and pass
`config.loss.kwargs`.
"""

from typing import Callable, NamedTuple

from metricjax.errors import UserError
from metricjax.losses.classification import softmax_cross_entropy
from metricjax.losses.contrastive import contrastive_loss
from metricjax.losses.contrastive import ntxent_loss
from metricjax.losses.multi_similarity import multi_similarity_loss
from metricjax.losses.shadow import shadow_loss
from metricjax.losses.shadow import shadow_margin_loss
from metricjax.losses.triplet import triplet_loss
from metricjax.losses.triplet import triplet_margin_loss
from metricjax.losses.vse import vse_ranking_loss


class Loss(NamedTuple):
  fn: Callable
  # What it consumes: "embedding" or "logits" of a labelled batch,
  # "triplets": fn(anchor, positive, negative, **kw) on explicit triplets,
  # or "image_text": fn(image_emb, text_emb, **kw), row i a matching pair.
  input: str


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
}


def get_loss(name: str) -> Loss:
  try:
    return REGISTRY[name]
  except KeyError:
    raise UserError(
        f"Unknown loss {name!r} (config.loss.name). Known losses: "
        f"{', '.join(sorted(REGISTRY))}. To add one, write it in "
        "metricjax/losses/ and register it in metricjax/losses/__init__.py."
    ) from None
