"""ResNet-18 and ResNet-50 (He et al.) in torchvision's layout, as DML trunks.

Module names follow torchvision's state_dict with "." before an index
written "_" (`layer1.0.downsample.1` -> `layer1_0/downsample_1`), so its
ImageNet weights convert 1:1 (metricjax/models/weights.py): conv weights
(O, I, kh, kw) -> HWIO kernels, batch norm weight/bias/running_mean/
running_var -> scale/bias/mean/var. ResNet v1.5 as torchvision: the stride of
a bottleneck is on its 3x3 conv.

Frozen batch norm (Proxy Anchor, the Reality Check) keeps the statistics AND
the affine parameters fixed: FrozenBatchNorm holds all four in the
"batch_stats" collection, so the optimiser never sees them and no step
changes them (weight decay included).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metricjax.errors import UserError

# Blocks per stage.
RESNET_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}
POOLINGS = ("avg", "max", "avg+max")


class FrozenBatchNorm(nn.Module):
  """Batch norm with fixed statistics and affine parameters (torchvision's
  FrozenBatchNorm2d), all four non-trainable, in "batch_stats"."""
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    stat = lambda name, init: self.variable("batch_stats", name, init,
                                            (c,), jnp.float32).value
    scale, bias = stat("scale", jnp.ones), stat("bias", jnp.zeros)
    mean, var = stat("mean", jnp.zeros), stat("var", jnp.ones)
    # Folded into one multiply-add, in float32, then cast.
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    add = bias - mean * mul
    return (x.astype(jnp.float32) * mul + add).astype(self.dtype)


def _norm(frozen: bool, train: bool, dtype, name: str) -> nn.Module:
  if frozen:
    return FrozenBatchNorm(dtype=dtype, name=name)
  # torchvision's BN: eps 1e-5, momentum 0.1 (flax's 0.9).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """torchvision's BasicBlock (ResNet-18/34): two 3x3 convs."""
  width: int
  stride: int = 1
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(_norm, self.frozen_bn, train, self.dtype)
    s = (self.stride, self.stride)
    y = nn.relu(norm("bn1")(conv(self.width, (3, 3), s, padding=1,
                                 name="conv1")(x)))
    y = norm("bn2")(conv(self.width, (3, 3), padding=1, name="conv2")(y))
    return nn.relu(y + _shortcut(x, self, conv, norm))


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (ResNet-50+): 1x1, 3x3 (strided), 1x1 x4."""
  width: int
  stride: int = 1
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(_norm, self.frozen_bn, train, self.dtype)
    s = (self.stride, self.stride)
    y = nn.relu(norm("bn1")(conv(self.width, (1, 1), name="conv1")(x)))
    y = nn.relu(norm("bn2")(conv(self.width, (3, 3), s, padding=1,
                                 name="conv2")(y)))
    y = norm("bn3")(conv(self.width * 4, (1, 1), name="conv3")(y))
    return nn.relu(y + _shortcut(x, self, conv, norm))


def _shortcut(x, block, conv, norm):
  out = block.width * block.expansion
  if block.stride == 1 and x.shape[-1] == out:
    return x
  s = (block.stride, block.stride)
  return norm("downsample_1")(conv(out, (1, 1), s, name="downsample_0")(x))


class ResNet(nn.Module):
  """torchvision's ResNet up to its average pool: NHWC float images
  (normalised as torchvision expects) -> pooled features.

  Follows the trunk contract of metricjax.models (see its docstring).

  Attributes:
    arch: "resnet18" or "resnet50".
    frozen_bn: batch norm with fixed statistics and affine parameters.
    dtype: compute dtype; parameters and batch-norm statistics stay float32.
  """
  arch: str = "resnet50"
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  # EmbeddingNet's: Proxy Anchor's global average + max. `__call__`'s own
  # default, "avg", is torchvision's output with fc = identity.
  default_pooling = "avg+max"
  framework = "torchvision"

  def __post_init__(self):
    super().__post_init__()
    if self.arch not in RESNET_DEPTHS:
      raise UserError(f"Unknown ResNet {self.arch!r}; known: "
                      f"{', '.join(RESNET_DEPTHS)}.")

  @property
  def features(self) -> int:
    """Width of the pooled features (512 for ResNet-18, 2048 for -50)."""
    return 512 * (4 if self.arch == "resnet50" else 1)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               pooling: str = "avg") -> jax.Array:
    if pooling not in POOLINGS:
      raise UserError(f"Unknown pooling {pooling!r} for a ResNet; use one of "
                      f"{', '.join(POOLINGS)}.")
    block = Bottleneck if self.arch == "resnet50" else BasicBlock
    x = x.astype(self.dtype)
    x = nn.Conv(64, (7, 7), (2, 2), padding=3, use_bias=False,
                dtype=self.dtype, name="conv1")(x)
    x = nn.relu(_norm(self.frozen_bn, train, self.dtype, "bn1")(x))
    # Padding with -inf, as torch's MaxPool2d(3, 2, 1).
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, depth in enumerate(RESNET_DEPTHS[self.arch]):
      for j in range(depth):
        stride = 2 if stage > 0 and j == 0 else 1
        x = block(64 * 2**stage, stride, self.frozen_bn, self.dtype,
                  name=f"layer{stage + 1}_{j}")(x, train=train)
    # Pooled in float32: the head and the losses read it.
    x = x.astype(jnp.float32)
    pooled = {"avg": lambda: jnp.mean(x, axis=(1, 2)),
              "max": lambda: jnp.max(x, axis=(1, 2)),
              # Proxy Anchor's: the sum of the two.
              "avg+max": lambda: jnp.mean(x, (1, 2)) + jnp.max(x, (1, 2))}
    return pooled[pooling]()


def resnet18(**kwargs) -> ResNet:
  return ResNet(arch="resnet18", **kwargs)


def resnet50(**kwargs) -> ResNet:
  return ResNet(arch="resnet50", **kwargs)
