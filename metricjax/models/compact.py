"""Compact embedding nets of paper 1 (Islam et al., arXiv 2404.06593).

The paper gives only "one involution layer followed by 4 convolution
layers", about 0.116 M parameters; the rest is our choice. The net is
len(widths) stages, each

  [spatial layer -> BN -> act] -> conv -> BN -> act -> 2x2 max pool

(no pool after the last stage), then global average pooling, a dense
embedding and L2 normalisation. The variants differ in the optional
spatial layer, which keeps the channel count, and the conv:

  hybrid{k}        a 3x3 involution before the 3x3 conv of each of the first
                   k stages (1 <= k <= len(widths)); hybrid1 is the paper's.
  conv_only        hybrid1 with its involution replaced by a 3x3 conv.
  involution_only  every stage has the involution and a 1x1 conv: the
                   involution does all spatial mixing, the 1x1 convs only
                   change the channel count.

With the default widths hybrid1 has about 0.118 M parameters (0.47 MB of
float32) on 28x28x1 and 32x32x3 input, 10-class head included.
"""

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metricjax import ops
from metricjax.errors import UserError
from metricjax.models.involution import Involution

# Exact GELU: the default of Keras and PyTorch, which the paper compares
# against ReLU.
ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "relu": nn.relu,
}


class Im2colConv(nn.Module):
  """nn.Conv (stride 1, "SAME", odd square kernel, no bias) as K*K shifted
  slices concatenated along channels and one matmul; the same parameter
  ("kernel", HWIO, lecun_normal), so the two are interchangeable.

  Why: XLA:CPU's convolution is slow for very few input channels (the
  first layer reads 1-channel images): at batch 256, 28x28, 1 -> 32,
  forward + both gradients took 42 ms this way against 125 ms as a conv
  (tools/README.md). With 32+ input channels the conv is as fast or faster.
  """
  features: int
  kernel_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    if k % 2 != 1:
      raise ValueError(f"Im2colConv needs an odd kernel size, got {k}")
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
    _, h, w, c = x.shape
    p = k // 2
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    # Tap-major, then channel: the order of the HWIO kernel's reshape.
    columns = jnp.concatenate([padded[:, i:i + h, j:j + w, :]
                               for i in range(k) for j in range(k)], axis=-1)
    return jnp.dot(columns, kernel.reshape(k * k * c, self.features))


class CompactNet(nn.Module):
  """Compact conv/involution embedding net; see the module docstring."""
  variant: str = "hybrid1"
  activation: str = "gelu"
  widths: tuple[int, ...] = (32, 64, 64, 96)
  embedding_dim: int = 64
  num_classes: int | None = None  # None: no classification head.
  # False leaves the embedding unnormalised, for losses whose point is what
  # they do with norms (Shadow loss without normalisation). Retrieval ranks
  # by cosine either way.
  normalize_embedding: bool = True
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  # Spatial convs reading at most this many channels run as Im2colConv (the
  # same parameters, float-rounding-equal outputs): faster on XLA:CPU for
  # the 1-channel first layers. 0: every conv is nn.Conv.
  im2col_channels: int = 0

  def __post_init__(self):
    super().__post_init__()
    # Fail when the model is built from a config, not at the first step.
    self._stage_plan()
    if self.activation not in ACTIVATIONS:
      raise UserError(
          f"Unknown activation {self.activation!r} (config.model.activation)."
          f" Valid: {', '.join(ACTIVATIONS)}.")

  def _stage_plan(self) -> list[tuple[str | None, int]]:
    """Per stage: the spatial layer before the conv, and the conv's size."""
    n = len(self.widths)
    match = re.fullmatch(r"hybrid([1-9]\d*)", self.variant)
    if match and int(match.group(1)) <= n:
      k = int(match.group(1))
      return [("involution" if i < k else None, 3) for i in range(n)]
    if self.variant == "conv_only":
      return [("conv", 3)] + [(None, 3)] * (n - 1)
    if self.variant == "involution_only":
      return [("involution", 1)] * n
    raise UserError(
        f"Unknown model variant {self.variant!r} (config.model.variant). "
        f"Valid: hybrid1 ... hybrid{n} (k involution layers, k at most "
        "len(widths)), conv_only, involution_only.")

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    if images.ndim != 4:
      raise ValueError(f"images must be (B, H, W, C), got shape "
                       f"{images.shape}")
    act = ACTIVATIONS[self.activation]
    def conv(features, kernel_size, name):
      def apply(x):
        if kernel_size[0] > 1 and x.shape[-1] <= self.im2col_channels:
          return Im2colConv(features, kernel_size[0], dtype=self.dtype,
                            name=name)(x)
        return nn.Conv(features, kernel_size, use_bias=False,
                       dtype=self.dtype, name=name)(x)
      return apply
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)

    # Preprocessing lives in the model so train, eval and export agree.
    x = images.astype(jnp.float32)
    if jnp.issubdtype(images.dtype, jnp.integer):
      x = x / 255.0
    x = ((x - 0.5) / 0.25).astype(self.dtype)

    plan = self._stage_plan()
    for i, (spatial, conv_size) in enumerate(plan):
      if spatial == "involution":
        x = Involution(activation=act, dtype=self.dtype,
                       name=f"involution{i}")(x, train=train)
      elif spatial == "conv":
        x = conv(x.shape[-1], (3, 3), name=f"spatial_conv{i}")(x)
      if spatial:
        x = act(norm(name=f"spatial{i}_bn")(x))
      x = conv(self.widths[i], (conv_size, conv_size), name=f"conv{i}")(x)
      x = act(norm(name=f"conv{i}_bn")(x))
      if i < len(plan) - 1:
        # "SAME" keeps the border row of odd sizes (28 -> 14 -> 7 -> 4).
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")

    # The head runs in float32: it is tiny and feeds the losses.
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    embedding = nn.Dense(self.embedding_dim, name="embedding")(features)
    outputs = {"embedding": (ops.l2_normalize(embedding)
                             if self.normalize_embedding else embedding)}
    if self.num_classes is not None:
      # On the unnormalised embedding: cross-entropy then shapes the space
      # retrieval uses, and unbounded logits need no temperature.
      outputs["logits"] = nn.Dense(self.num_classes, name="head")(embedding)
    return outputs
