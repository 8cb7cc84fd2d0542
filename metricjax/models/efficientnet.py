"""EfficientNet-Lite0/1/2 (Tan & Le; TensorFlow's efficientnet/lite) in the
efficientnet_pytorch layout, as DML trunks.

The Lite variants drop squeeze-and-excitation and use ReLU6 (both for
integer quantisation) and keep the stem (32) and head (1280) widths and the
first and last stages' depths fixed while the others scale. Convolutions pad
as TensorFlow's "SAME" (output ceil(input / stride), the odd pixel at the
bottom / right): the PyTorch port computes that padding once for the
checkpoint's image size (Conv2dStaticSamePadding), which is what "SAME"
gives at that size; at other sizes this follows TensorFlow. Batch norm has
TensorFlow's eps 1e-3 and momentum 0.99. Drop connect (training-only
stochastic depth in the reference) is left out, as the ResNet trunks leave
out their training-time extras: fine-tuning here uses frozen batch norm.

Module names follow the PyTorch state_dict without its leading underscores
and with "." before an index written "_" (`_blocks.3._depthwise_conv` ->
`blocks_3/depthwise_conv`), so the ImageNet weights convert 1:1
(metricjax/models/weights.py). The checkpoint expects (x - 127) / 128 per
channel (TensorFlow's MEAN_RGB / STDDEV_RGB for Lite), not torchvision's
normalisation: `preprocess = "lite"` (models.preprocess_imagenet).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.models.resnet import FrozenBatchNorm
from metricjax.models.resnet import POOLINGS

# arch -> (width multiplier, depth multiplier, image size), TensorFlow's
# efficientnet_lite_builder.efficientnet_lite_params.
LITE_ARCHS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
# Stages before scaling: (repeats, kernel, stride, expansion, out channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40),
          (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
          (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280


def round_filters(filters: int, multiplier: float, divisor: int = 8) -> int:
  """TensorFlow's round_filters: the nearest multiple of 8, never more than
  10% below filters * multiplier."""
  scaled = filters * multiplier
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_configs(arch: str) -> list[tuple[int, int, int, int, int]]:
  """(kernel, stride, expansion, in, out) of every MBConv block, in order."""
  width, depth, _ = LITE_ARCHS[arch]
  blocks, cin = [], STEM
  for i, (repeats, kernel, stride, expand, out) in enumerate(STAGES):
    out = round_filters(out, width)
    if 0 < i < len(STAGES) - 1:  # Lite fixes the first and last stages.
      repeats = int(math.ceil(depth * repeats))
    for j in range(repeats):
      blocks.append((kernel, stride if j == 0 else 1, expand, cin, out))
      cin = out
  return blocks


def _norm(frozen: bool, train: bool, dtype, name: str) -> nn.Module:
  if frozen:
    return FrozenBatchNorm(epsilon=1e-3, dtype=dtype, name=name)
  # TensorFlow's momentum 0.99 (torch's 0.01), eps 1e-3.
  return nn.BatchNorm(use_running_average=not train, momentum=0.99,
                      epsilon=1e-3, dtype=dtype, name=name)


class MBConv(nn.Module):
  """Inverted residual: 1x1 expansion, depthwise kxk, 1x1 projection; the
  identity shortcut when shape is kept (no SE in Lite)."""
  kernel: int
  stride: int
  expand: int
  out: int
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = lambda name: _norm(self.frozen_bn, train, self.dtype, name)
    conv = lambda features, name: nn.Conv(features, (1, 1), use_bias=False,
                                          dtype=self.dtype, name=name)
    cin = x.shape[-1]
    y = x
    hidden = cin * self.expand
    if self.expand != 1:
      y = nn.relu6(norm("bn0")(conv(hidden, "expand_conv")(y)))
    y = nn.Conv(hidden, (self.kernel, self.kernel), self.stride,
                padding="SAME", feature_group_count=hidden, use_bias=False,
                dtype=self.dtype, name="depthwise_conv")(y)
    y = nn.relu6(norm("bn1")(y))
    y = norm("bn2")(conv(self.out, "project_conv")(y))
    if self.stride == 1 and cin == self.out:
      y = y + x
    return y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite up to its average pool: NHWC float images, (x - 127)
  / 128 -> pooled features (the reference's input to `_fc`).

  Follows the trunk contract of metricjax.models (see its docstring).

  Attributes:
    arch: a LITE_ARCHS name.
    frozen_bn: batch norm with fixed statistics and affine parameters.
    dtype: compute dtype; parameters and batch-norm statistics stay float32.
  """
  arch: str = "efficientnet_lite0"
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  default_pooling = "avg"  # The reference's input to its classifier.
  preprocess = "lite"
  framework = "efficientnet_pytorch"
  features = HEAD  # Lite keeps the head's width whatever the multiplier.

  def __post_init__(self):
    super().__post_init__()
    if self.arch not in LITE_ARCHS:
      raise UserError(f"Unknown EfficientNet-Lite {self.arch!r}; known: "
                      f"{', '.join(LITE_ARCHS)}.")

  @property
  def image_size(self) -> int:
    """The resolution the ImageNet weights were trained at."""
    return LITE_ARCHS[self.arch][2]

  def weights_meta(self, flat) -> dict:
    del flat  # The size is the architecture's.
    return {"image_size": self.image_size}

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               pooling: str = "avg") -> jax.Array:
    if pooling not in POOLINGS:
      raise UserError(f"Unknown pooling {pooling!r} for an EfficientNet; use "
                      f"one of {', '.join(POOLINGS)}.")
    norm = lambda name: _norm(self.frozen_bn, train, self.dtype, name)
    x = x.astype(self.dtype)
    x = nn.Conv(STEM, (3, 3), (2, 2), padding="SAME", use_bias=False,
                dtype=self.dtype, name="conv_stem")(x)
    x = nn.relu6(norm("bn0")(x))
    for i, (kernel, stride, expand, _, out) in enumerate(
        block_configs(self.arch)):
      x = MBConv(kernel, stride, expand, out, self.frozen_bn, self.dtype,
                 name=f"blocks_{i}")(x, train=train)
    x = nn.Conv(HEAD, (1, 1), use_bias=False, dtype=self.dtype,
                name="conv_head")(x)
    # Pooled in float32: the head and the losses read it.
    x = nn.relu6(norm("bn1")(x)).astype(jnp.float32)
    pooled = {"avg": lambda: jnp.mean(x, axis=(1, 2)),
              "max": lambda: jnp.max(x, axis=(1, 2)),
              "avg+max": lambda: jnp.mean(x, (1, 2)) + jnp.max(x, (1, 2))}
    return pooled[pooling]()


def efficientnet_lite0(**kwargs) -> EfficientNetLite:
  return EfficientNetLite(arch="efficientnet_lite0", **kwargs)


def efficientnet_lite1(**kwargs) -> EfficientNetLite:
  return EfficientNetLite(arch="efficientnet_lite1", **kwargs)


def efficientnet_lite2(**kwargs) -> EfficientNetLite:
  return EfficientNetLite(arch="efficientnet_lite2", **kwargs)
