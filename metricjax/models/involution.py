"""The involution layer: a kernel generator plus `metricjax.ops.involution`."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from metricjax import ops
from metricjax.ops import activations


class Involution(nn.Module):
  """Involution (Li et al., CVPR 2021); keeps the channel count.

  The kernel at each output pixel is span(act(BN(reduce(x)))), read from an
  s x s average-pooled input when stride s > 1, as in the official code.
  """
  kernel_size: int = 3
  stride: int = 1
  group_channels: int = 16  # Channels per group: G = C // group_channels.
  reduction_ratio: int = 4
  # C // r is 0 for 1- and 3-channel images, which would leave the generator
  # no hidden units. Four keep a few nonlinear features of the pixel's colour
  # for a few dozen parameters.
  min_reduced_channels: int = 4
  activation: Callable[[jax.Array], jax.Array] = activations.gelu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    c = x.shape[-1]
    if c > self.group_channels and c % self.group_channels:
      raise ValueError(f"Involution: {c} input channels are not a multiple "
                       f"of group_channels={self.group_channels}")
    # Fewer channels than one group's worth make a single group.
    groups = max(1, c // self.group_channels)
    reduced = max(c // self.reduction_ratio, self.min_reduced_channels)
    k2 = self.kernel_size * self.kernel_size

    x = jnp.asarray(x, self.dtype)
    h = x
    if self.stride > 1:
      # "SAME" pooling gives ceil(H/s) rows, the involution's output size;
      # excluding the padding keeps the ragged edge an average of real pixels.
      # Keywords: jax2onnx (--format=onnx) swaps in a keyword-only pool.
      h = nn.avg_pool(h, window_shape=(self.stride, self.stride),
                      strides=(self.stride, self.stride), padding="SAME",
                      count_include_pad=False)
    h = nn.Conv(reduced, (1, 1), use_bias=False, dtype=self.dtype,
                name="reduce")(h)
    # PyTorch's BatchNorm2d defaults, as in the official code.
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=1e-5, dtype=self.dtype, name="reduce_bn")(h)
    h = self.activation(h)
    h = nn.Conv(k2 * groups, (1, 1), dtype=self.dtype, name="span")(h)
    kernel = h.reshape(*h.shape[:3], k2, groups)
    return ops.involution(x, kernel, kernel_size=self.kernel_size,
                          stride=self.stride)
