"""A pretrained trunk with the DML head of the field's comparisons.

uint8 (or [0, 1] float) NHWC images -> the ImageNet normalisation the
trunk's weights expect (its `preprocess`, torchvision's unless it says) ->
trunk (models.TRUNKS[backbone]) -> pooled features -> Linear to
embedding_dim -> L2 normalisation, as Proxy Anchor (Kim et al. 2020) and the
Reality Check (Musgrave et al. 2020) fine-tune their backbones: batch norm
frozen (statistics and affine parameters) where the trunk has it, pooled
as the trunk declares (`default_pooling`: ResNets by global average + max,
Proxy Anchor's; ViTs by their CLS token; EfficientNet-Lite by average). `weights` (a tools/convert_backbone.py
.npz) fills the trunk at initialisation (models.load_pretrained).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metricjax import ops
from metricjax.errors import UserError
from metricjax.models import backbones
from metricjax.models.vgg import preprocess_imagenet


class EmbeddingNet(nn.Module):
  """Trunk + linear embedding head; see the module docstring.

  Attributes:
    backbone: a models.TRUNKS name (resnet18, resnet50, vit_s16, ...).
    embedding_dim: width of the embedding (512 in both protocols).
    pooling: the trunk's pooling; None: its `default_pooling` ("avg+max"
      for ResNets, "cls" for ViTs, "avg" for EfficientNet-Lite).
    frozen_bn: None: frozen for trunks with batch norm; True on a trunk
      without batch norm is an error.
    weights: a converted .npz for the trunk; None: random initialisation.
    num_classes: a classification head on the embedding; None for none.
    dtype: compute dtype; parameters and the head stay float32.
  """
  backbone: str = "resnet50"
  embedding_dim: int = 512
  pooling: str | None = None
  frozen_bn: bool | None = None
  weights: str | None = None
  num_classes: int | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    # Fail when the model is built from a config, not at the first step.
    if self.backbone not in backbones.TRUNKS:
      raise UserError(f"Unknown backbone {self.backbone!r} (config.model."
                      f"backbone); known: {', '.join(backbones.TRUNKS)}.")
    if (isinstance(self.embedding_dim, bool)
        or not isinstance(self.embedding_dim, int) or self.embedding_dim < 1):
      raise UserError(f"config.model.embedding_dim={self.embedding_dim!r}; it "
                      "must be a positive integer (512 in the protocols).")
    self.trunk_module(parent=None)

  def trunk_module(self, **kwargs) -> nn.Module:
    cls = backbones.TRUNKS[self.backbone]
    has_bn = "frozen_bn" in cls(parent=None).__dataclass_fields__
    if self.frozen_bn and not has_bn:
      raise UserError(
          f"config.model.frozen_bn=True, but backbone {self.backbone!r} has no "
          "batch norm to freeze (ViTs use layer norm). Drop frozen_bn or set "
          "it to False.")
    kwargs.update(dtype=self.dtype, name="trunk")
    if has_bn:
      kwargs["frozen_bn"] = self.frozen_bn is not False
    return cls(**kwargs)

  @property
  def trunk_pooling(self) -> str:
    if self.pooling is not None:
      return self.pooling
    return backbones.trunk(self.backbone).default_pooling

  @property
  def trunk_preprocess(self) -> str:
    """The preprocess_imagenet mode of the trunk's weights."""
    return getattr(backbones.trunk(self.backbone), "preprocess", "torch")

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    if not jnp.issubdtype(images.dtype, jnp.integer):  # [0, 1] floats.
      images = images.astype(jnp.float32) * 255.0
    x = preprocess_imagenet(images, mode=self.trunk_preprocess)
    features = self.trunk_module()(x, train=train, pooling=self.trunk_pooling)
    embedding = nn.Dense(self.embedding_dim, name="embedding")(
        features.astype(jnp.float32))
    outputs = {"embedding": ops.l2_normalize(embedding)}
    if self.num_classes is not None:
      outputs["logits"] = nn.Dense(self.num_classes, name="head")(embedding)
    return outputs
