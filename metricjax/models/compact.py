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
from metricjax.ops import activations
from metricjax.errors import UserError
from metricjax.models.involution import Involution

# Exact GELU: the default of Keras and PyTorch, which the paper compares
# against ReLU; in the erf form XLA:CPU compiles fastest (ops/activations.py).
ACTIVATIONS = {
    "gelu": activations.gelu,
    "relu": nn.relu,
}


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
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
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
        x = ops.max_pool_2x2(x, "SAME")

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
