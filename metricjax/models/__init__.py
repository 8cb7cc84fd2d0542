"""Flax Linen models and the registry that builds them from a config.

MODELS: what `config.model.name` picks; `__call__(images, *, train)` on
uint8 NHWC images returns {"embedding": L2-normalised (B, D)[, "logits"]}.
"embedding_net" (models/embedding.py) puts the DML head on a pretrained
trunk picked by `config.model.backbone`.

TRUNKS: pretrained feature extractors by name (resnet18, resnet50,
vit_s16, efficientnet_lite0, ...); TAPPED: the VGGs of the Full-Network
Embedding. Both live in models/backbones.py, which also states the trunk
contract: bringing your own backbone is one file in metricjax/models/ and
one line in TRUNKS (docs/backbones.md walks through it).
`load_backbone(npz) -> (module, variables)` loads any converted trunk or
VGG; a packaged checkpoint's name (models/packaged.py: efficientnet_lite0)
stands for its converted file.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.models.backbones import TAPPED
from metricjax.models.backbones import TRUNKS
from metricjax.models.compact import CompactNet
from metricjax.models.embedding import EmbeddingNet
from metricjax.models.involution import Involution
from metricjax.models.text_encoder import GRUTextEncoder
from metricjax.models.vgg import preprocess_imagenet
from metricjax.models.vgg import VGG
from metricjax.models.vgg import vgg16
from metricjax.models.vgg import VGGNet
from metricjax.models.vse import VSEModel
from metricjax.models.weights import load_backbone
from metricjax.models.weights import load_pretrained

MODELS: dict[str, type[nn.Module]] = {
    "compact": CompactNet,
    # A pretrained trunk (TRUNKS) with the DML head (configs/dml_benchmark.py).
    "embedding_net": EmbeddingNet,
    # A VGG trained here (configs/cifar_vgg.py), exported as an FNE backbone.
    "vgg": VGGNet,
    # The joint image-caption model of the "vse" task (configs/fne_vse.py).
    "vse": VSEModel,
}


def _module_fields(cls: type[nn.Module]) -> list[str]:
  # Linen's own `parent` and `name` are not model settings; `name` in a
  # model config picks the registry entry instead.
  return [f.name for f in dataclasses.fields(cls)
          if f.init and f.name not in ("parent", "name")]


COMPUTE_DTYPES = ("float32", "bfloat16")


def create_model(model_config: Mapping[str, Any], *,
                 num_classes: int | None = None,
                 compute_dtype: str | None = None) -> nn.Module:
  """Builds MODELS[model_config.name] with the config's other fields.

  model_config is an ml_collections ConfigDict or a dict; num_classes (from
  the dataset) adds a classification head.
  """
  if hasattr(model_config, "to_dict"):
    model_config = model_config.to_dict()
  kwargs = dict(model_config)
  name = kwargs.pop("name", None)
  if name not in MODELS:
    raise UserError(f"Unknown model {name!r} (config.model.name). Known "
                    f"models: {', '.join(sorted(MODELS))}.")
  cls = MODELS[name]
  valid = _module_fields(cls)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise UserError(f"Unknown field(s) {', '.join(unknown)} in config.model "
                    f"for model {name!r}. Valid fields: {', '.join(valid)}.")
  if num_classes is not None:
    configured = kwargs.get("num_classes")
    if configured is not None and configured != num_classes:
      raise UserError(
          f"config.model.num_classes={configured} disagrees with the "
          f"dataset's {num_classes} classes; drop it from the config.")
    kwargs["num_classes"] = num_classes
  if compute_dtype is not None:
    # config.compute_dtype: activations in it; parameters, batch-norm
    # statistics and the heads stay float32 (each model says where).
    if compute_dtype not in COMPUTE_DTYPES:
      raise UserError(f"config.compute_dtype={compute_dtype!r}; use one of "
                      f"{', '.join(COMPUTE_DTYPES)}.")
    kwargs["dtype"] = compute_dtype
  # Configs hold lists (nested, once through JSON) and dtype names; modules
  # want hashable tuples and dtypes.
  kwargs = {k: as_tuples(v) for k, v in kwargs.items()}
  if isinstance(kwargs.get("dtype"), str):
    try:
      kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    except TypeError:
      raise UserError(f"Unknown dtype {kwargs['dtype']!r} in config.model; "
                      "use float32 or bfloat16.") from None
  return cls(**kwargs)


def as_tuples(value: Any) -> Any:
  """Lists, nested too, as tuples: [[64, 64], [128]] -> ((64, 64), (128,))."""
  if isinstance(value, (list, tuple)):
    return tuple(as_tuples(v) for v in value)
  return value


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree."""
  return sum(x.size for x in jax.tree.leaves(params))


def param_bytes(params: Any) -> int:
  """Bytes taken by a parameter pytree at its own dtypes."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


__all__ = ["MODELS", "TAPPED", "TRUNKS", "CompactNet", "EmbeddingNet",
           "GRUTextEncoder", "Involution", "VGG", "VGGNet", "VSEModel",
           "as_tuples", "count_params", "create_model", "load_backbone",
           "load_pretrained", "param_bytes", "preprocess_imagenet", "vgg16"]
