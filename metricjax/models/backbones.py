"""The backbone registry: each pretrained backbone is one line here.

A backbone is one file in metricjax/models/ (its Linen module) and one line
in TRUNKS below. Everything else reads TRUNKS: weights conversion and
loading (models/weights.py: tools/convert_backbone.py's --arch, the arch a
weights .npz names, load_backbone), models.EmbeddingNet
(config.model.backbone) and configs/dml_benchmark.py (backbone=). No other
list of backbone names exists (tests/models/test_backbones.py checks it).

A trunk is a Linen module built by `TRUNKS[name](**kwargs)` (kwargs from its
weights file's meta, "model"), with
  - fields `dtype` (the compute dtype; parameters stay float32) and, if it
    has batch norm, `frozen_bn` (statistics and affine fixed);
  - attributes `features` (int, the width of its pooled features) and
    `default_pooling` (str, the pooling EmbeddingNet puts under its head
    unless config.model.pooling says otherwise);
  - optionally `preprocess` (a models.preprocess_imagenet mode; "torch" if
    absent), the normalisation its weights expect, `framework` (the library
    whose state_dict layout it reads, recorded in the .npz's meta) and
    `weights_meta(flat) -> dict` (meta entries the converted weights imply,
    such as the "image_size" they were trained at; 224 if absent);
  - `__call__(x, *, train: bool, pooling: str = ...)` taking NHWC float32
    images normalised so and returning float32 (B, features) pooled
    features; the default of `pooling` gives the reference model's own
    features (what `load_backbone(npz)`'s module returns);
  - variables in "params" (trained) and "batch_stats" (not trained), named
    so that `weights.flat_from_torch` maps its torch state_dict onto them
    (or write the .npz of models/weights.py another way).

TAPPED lists the frozen feature extractors with named taps of the
Full-Network Embedding (metricjax.fne): `taps`, `fne_taps` and
`__call__(x, capture=True)` -> {tap: activation}.
"""

from typing import Callable

import flax.linen as nn

from metricjax.errors import UserError
from metricjax.models import efficientnet
from metricjax.models import resnet
from metricjax.models import vgg
from metricjax.models import vit

# name -> constructor taking the weights meta's "model" kwargs.
TRUNKS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet.resnet18,
    "resnet50": resnet.resnet50,
    "vit_s16": vit.vit_s16,
    "efficientnet_lite0": efficientnet.efficientnet_lite0,
    # No ImageNet weights of these are packaged (models/packaged.py); they
    # convert from the same efficientnet_lite_pytorch layout.
    "efficientnet_lite1": efficientnet.efficientnet_lite1,
    "efficientnet_lite2": efficientnet.efficientnet_lite2,
}

# FNE extractors (metricjax.fne, the "vse" task's config.backbone.name).
TAPPED: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg.vgg16,  # ImageNet's (tools/convert_vgg16.py).
    "vgg": vgg.VGG,  # One trained here (tools/export_vgg_backbone.py).
}


def trunk(name: str, **kwargs) -> nn.Module:
  """`TRUNKS[name](**kwargs)`, unbound; a UserError names the known ones."""
  if name not in TRUNKS:
    raise UserError(f"Unknown backbone {name!r}; known: "
                    f"{', '.join(TRUNKS)}.")
  return TRUNKS[name](parent=None, **kwargs)
