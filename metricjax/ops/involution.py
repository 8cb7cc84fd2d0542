"""Involution (Li et al., CVPR 2021): a spatial filter generated per pixel.

Layout contract (matches the official PyTorch code, d-li14/involution):
x is (B, H, W, C); kernel is (B, Ho, Wo, K*K, G), the K*K axis row-major
over (dy, dx) and group g owning the contiguous channels
[g*C/G, (g+1)*C/G). Zero padding (K-1)//2, Ho = ceil(H/stride).
"""

import jax
import jax.numpy as jnp


def _output_shape(x: jax.Array, kernel: jax.Array, kernel_size: int,
                  stride: int) -> tuple[int, int, int]:
  """Checks the shapes and returns (Ho, Wo, G)."""
  if (not isinstance(kernel_size, int) or kernel_size < 1
      or kernel_size % 2 == 0):
    raise ValueError(f"kernel_size must be a positive odd int, got "
                     f"{kernel_size!r}")
  if not isinstance(stride, int) or stride < 1:
    raise ValueError(f"stride must be a positive int, got {stride!r}")
  if x.ndim != 4:
    raise ValueError(f"x must be (B, H, W, C), got shape {x.shape}")
  if kernel.ndim != 5:
    raise ValueError(f"kernel must be (B, Ho, Wo, K*K, G), got shape "
                     f"{kernel.shape}")
  b, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  groups = kernel.shape[-1]
  expected = (b, ho, wo, kernel_size * kernel_size)
  if kernel.shape[:4] != expected:
    raise ValueError(
        f"kernel shape {kernel.shape} does not fit x {x.shape} with "
        f"kernel_size={kernel_size}, stride={stride}: expected {expected} + "
        "(G,)")
  if groups < 1 or c % groups:
    raise ValueError(f"the number of groups G={groups} (kernel.shape[-1]) "
                     f"must divide the channels C={c}")
  return ho, wo, groups


def involution(x: jax.Array, kernel: jax.Array, *, kernel_size: int,
               stride: int = 1) -> jax.Array:
  """Involution of x with a per-pixel kernel, (B, Ho, Wo, C).

  Sums K*K strided slices of the padded input, each scaled by its kernel
  tap, so memory stays O(B*Ho*Wo*C) instead of the K*K-fold patch tensor
  of the unfold formulation.
  """
  ho, wo, groups = _output_shape(x, kernel, kernel_size, stride)
  b, _, _, c = x.shape
  dtype = jnp.result_type(x, kernel)
  # Low-precision inputs still sum their up to K*K taps in float32.
  acc_dtype = jnp.promote_types(dtype, jnp.float32)
  pad = (kernel_size - 1) // 2
  x_pad = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  x_pad = x_pad.reshape(*x_pad.shape[:3], groups, c // groups)
  # One split rather than K*K indexing ops: its transpose is a single
  # concatenate, not K*K pad-and-adds of kernel-sized gradients.
  taps = jnp.split(kernel, kernel_size * kernel_size, axis=3)
  out = jnp.zeros((b, ho, wo, groups, c // groups), acc_dtype)
  for dy in range(kernel_size):
    for dx in range(kernel_size):
      window = jax.lax.slice(
          x_pad, (0, dy, dx, 0, 0),
          (b, dy + (ho - 1) * stride + 1, dx + (wo - 1) * stride + 1,
           groups, c // groups),
          (1, stride, stride, 1, 1))
      # (B, Ho, Wo, 1, G) -> (B, Ho, Wo, G, 1): one weight per group.
      tap = jnp.swapaxes(taps[dy * kernel_size + dx], 3, 4)
      out += window.astype(acc_dtype) * tap.astype(acc_dtype)
  return out.reshape(b, ho, wo, c).astype(dtype)


def involution_reference(x: jax.Array, kernel: jax.Array, *,
                         kernel_size: int, stride: int = 1) -> jax.Array:
  """The textbook form (extract K*K patches, then contract); for tests."""
  ho, wo, groups = _output_shape(x, kernel, kernel_size, stride)
  b, _, _, c = x.shape
  pad = (kernel_size - 1) // 2
  patches = jax.lax.conv_general_dilated_patches(
      x, (kernel_size, kernel_size), (stride, stride),
      ((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  # The patch features are ordered (C, dy, dx), channel-major.
  patches = patches.reshape(b, ho, wo, groups, c // groups,
                            kernel_size * kernel_size)
  out = jnp.einsum("bhwgck,bhwkg->bhwgc", patches, kernel,
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(b, ho, wo, c)
