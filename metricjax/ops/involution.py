"""Involution (Li et al., CVPR 2021): a spatial filter generated per pixel.

Layout contract (matches the official PyTorch code, d-li14/involution):
x is (B, H, W, C); kernel is (B, Ho, Wo, K*K, G), the K*K axis row-major
over (dy, dx) and group g owning the contiguous channels
[g*C/G, (g+1)*C/G). Zero padding (K-1)//2, Ho = ceil(H/stride).

`involution` has a hand-written backward pass (`jax.custom_vjp`, reverse
mode only): like the forward, it is K*K shifted multiply-adds that XLA fuses
into a few loops, with no K*K-fold patch tensor and no per-tap temporaries.
See tools/results/involution.md for how the formulation was chosen and its speed.
"""

import functools
import operator

import jax
import jax.numpy as jnp

# Channels per group summed by unrolled slices; more go through a two-level
# sum so the unrolled expression (and compile time) stays small.
_MAX_UNROLLED_CHANNELS = 16

# XLA:CPU's instruction fusion inlines a producer into a loop that reads it
# at up to this many different indices, recomputing it per read
# (FusionNodeIndexingEvaluation::kAllowedCodeDuplication); past it, the
# producer is computed once into memory.
_XLA_MAX_INLINED_READS = 15
# XLA:CPU fuses a concatenate of at most this many operands (on a non-minor
# axis) into its consumers' loop; more are copied separately.
_MAX_CONCAT_CHUNKS = 8
# Kernel rows whose dkernel taps one fused loop computes, by kernel size
# (default 1): for K = 3 one loop for all 9 taps reads the padded input and
# the cotangent once instead of 3 times (0.8-1.0x the time, same process);
# for K = 7 a loop over all taps measured 1.4-4x slower than one per row.
_DKERNEL_ROWS_PER_LOOP = {3: 3}


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


def _acc_dtype(x, kernel):
  # Low-precision inputs still sum their up to K*K taps in float32.
  return jnp.promote_types(jnp.result_type(x, kernel), jnp.float32)


def _padded_groups(x, kernel_size, groups):
  """x split into groups and zero-padded by (K-1)//2, (B, Hp, Wp, G, C/G).

  Split first, then pad: with the reshape after the pad, XLA moves it past
  the forward's slices but not the backward's, and the forward and the
  backward each materialise their own padded copy of x.
  """
  pad = (kernel_size - 1) // 2
  x = x.reshape(*x.shape[:3], groups, -1)
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0), (0, 0)))


def _window(x_pad, dy, dx, ho, wo, stride):
  """The input pixels that tap (dy, dx) reads for each output pixel."""
  start = (0, dy, dx) + (0,) * (x_pad.ndim - 3)
  limit = ((x_pad.shape[0], dy + (ho - 1) * stride + 1,
            dx + (wo - 1) * stride + 1) + x_pad.shape[3:])
  return jax.lax.slice(x_pad, start, limit,
                       (1, stride, stride) + (1,) * (x_pad.ndim - 3))


def _sum(terms):
  # Unlike builtins.sum, adds no leading 0 to the expression.
  return functools.reduce(operator.add, terms)


def _group_dot(a, b):
  """sum(a * b, axis=-1) as unrolled multiply-adds of channel slices.

  jnp.sum would be a reduce op, which XLA:CPU does not fuse with the strided
  window feeding it: every tap's window would then become an input-sized
  temporary. Slices and adds fuse into one loop with the caller's update.
  """
  n = a.shape[-1]
  if n > _MAX_UNROLLED_CHANNELS:
    # Contiguous chunks of m channels first (vector-wide multiply-adds),
    # then the m partial sums.
    m = max(d for d in range(1, _MAX_UNROLLED_CHANNELS + 1) if n % d == 0)
    a = a.reshape(*a.shape[:-1], n // m, m)
    b = b.reshape(*b.shape[:-1], n // m, m)
    partial = _sum(a[..., r, :] * b[..., r, :] for r in range(n // m))
    return _sum(partial[..., i] for i in range(m))
  return _sum(a[..., i] * b[..., i] for i in range(n))


def _forward(x, kernel, kernel_size, stride):
  b, _, _, c = x.shape
  _, ho, wo, _, groups = kernel.shape
  dtype, acc_dtype = jnp.result_type(x, kernel), _acc_dtype(x, kernel)
  x_pad = _padded_groups(x, kernel_size, groups)
  kernel = kernel.astype(acc_dtype)
  out = None
  for dy in range(kernel_size):
    for dx in range(kernel_size):
      # One weight per group, broadcast over its C/G channels.
      tap = kernel[:, :, :, dy * kernel_size + dx, :, None]
      window = _window(x_pad, dy, dx, ho, wo, stride).astype(acc_dtype)
      term = window * tap
      out = term if out is None else out + term
  return out.reshape(b, ho, wo, c).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _involution(x, kernel, kernel_size, stride):
  return _forward(x, kernel, kernel_size, stride)


def _involution_fwd(x, kernel, kernel_size, stride):
  return _forward(x, kernel, kernel_size, stride), (x, kernel)


def _involution_bwd(kernel_size, stride, residuals, cotangent):
  x, kernel = residuals
  b, h, w, c = x.shape
  _, ho, wo, _, groups = kernel.shape
  acc_dtype = _acc_dtype(x, kernel)
  pad = (kernel_size - 1) // 2
  ct = cotangent.astype(acc_dtype).reshape(b, ho, wo, groups, c // groups)
  zero = jnp.zeros((), acc_dtype)
  span_h, span_w = (ho - 1) * stride + 1, (wo - 1) * stride + 1

  # dx: each tap's weighted cotangent, moved back to the input pixels it
  # read. Interior padding undoes the stride, negative edge padding crops
  # the zero border; all K*K pads and adds fuse into one loop over dx.
  #
  # That loop reads the cotangent at K*K shifted positions, and how XLA:CPU
  # compiles it depends on what computed the cotangent. When that is a cheap
  # expression of this op's own output (the gradient of sum(out**2), a
  # following activation's or norm's backward), XLA inlines the expression,
  # forward included, into every read of up to _XLA_MAX_INLINED_READS reads,
  # else computes it once into memory, where the dkernel loop reads it
  # anyway. Three things keep it there:
  # - for small K (K*K <= 15) the batch is split into chunks whose dx are
  #   concatenated on the batch axis (fused into the same single loop):
  #   every chunk's taps are separate reads;
  # - each tap pads the cotangent and the kernel tap separately, then
  #   multiplies: padding their product let XLA reassociate a constant
  #   factor of the cotangent (the 2 of 2 * out) onto the kernel, so dx read
  #   `out` while dkernel read `2 * out`, and the forward ran twice;
  # - the loop runs over one extra row, cropped after the sum, so no tap's
  #   pad is the identity (XLA would drop it and the centre tap would again
  #   read `out` through the reassociated product).
  def grad_x_of(ct, kernel):
    grad_x = None
    for dy in range(kernel_size):
      for dx in range(kernel_size):
        config = ((0, 0, 0),
                  (dy - pad, h - span_h - dy + pad + 1, stride - 1),
                  (dx - pad, w - span_w - dx + pad, stride - 1),
                  (0, 0, 0), (0, 0, 0))
        tap = kernel[:, :, :, dy * kernel_size + dx, :, None]
        term = (jax.lax.pad(ct, zero, config)
                * jax.lax.pad(tap.astype(acc_dtype), zero, config))
        grad_x = term if grad_x is None else grad_x + term
    return grad_x[:, :h]

  chunks = -(-(_XLA_MAX_INLINED_READS + 1) // kernel_size**2)
  if 1 < chunks <= min(b, _MAX_CONCAT_CHUNKS) and kernel_size > 1:
    bounds = [b * i // chunks for i in range(chunks + 1)]
    grad_x = jnp.concatenate(
        [grad_x_of(ct[lo:hi], kernel[lo:hi])
         for lo, hi in zip(bounds[:-1], bounds[1:])], axis=0)
  else:
    grad_x = grad_x_of(ct, kernel)
  grad_x = grad_x.reshape(b, h, w, c).astype(x.dtype)

  # dkernel[..., t, g]: the group's channels of tap t's window dotted with
  # the cotangent, per pixel. One fused loop per kernel row dy (per block of
  # rows, _DKERNEL_ROWS_PER_LOOP) writes that row's K contiguous taps in
  # place (pads select the tap, the update slice writes into the output
  # buffer): no stack of K*K taps, no K*K windows alive at once, and the
  # cotangent is read K times (once for K = 3), not K*K. One loop per tap
  # measured slower on CPU, and so did one for all taps at K = 7.
  x_pad = _padded_groups(x, kernel_size, groups)
  rows_per_loop = _DKERNEL_ROWS_PER_LOOP.get(kernel_size, 1)
  grad_kernel = jnp.zeros(kernel.shape, kernel.dtype)
  for dy0 in range(0, kernel_size, rows_per_loop):
    rows = range(dy0, min(dy0 + rows_per_loop, kernel_size))
    n_taps = len(rows) * kernel_size
    block = None
    for i, (dy, dx) in enumerate(
        (dy, dx) for dy in rows for dx in range(kernel_size)):
      window = _window(x_pad, dy, dx, ho, wo, stride).astype(acc_dtype)
      tap = _group_dot(window, ct)[:, :, :, None, :]
      tap = jax.lax.pad(tap, zero, ((0, 0, 0),) * 3 + (
          (i, n_taps - 1 - i, 0), (0, 0, 0)))
      block = tap if block is None else block + tap
    grad_kernel = jax.lax.dynamic_update_slice(
        grad_kernel, block.astype(kernel.dtype),
        (0, 0, 0, dy0 * kernel_size, 0))
  return grad_x, grad_kernel


_involution.defvjp(_involution_fwd, _involution_bwd)


def involution(x: jax.Array, kernel: jax.Array, *, kernel_size: int,
               stride: int = 1) -> jax.Array:
  """Involution of x with a per-pixel kernel, (B, Ho, Wo, C).

  Sums K*K strided slices of the padded input, each scaled by its kernel
  tap; memory stays O(B*Ho*Wo*C) forward and backward, instead of the
  K*K-fold patch tensor of the unfold formulation. Differentiable in
  reverse mode (grad, vjp), not forward mode (jvp).
  """
  _output_shape(x, kernel, kernel_size, stride)
  return _involution(x, kernel, kernel_size, stride)


def involution_autodiff(x: jax.Array, kernel: jax.Array, *, kernel_size: int,
                        stride: int = 1) -> jax.Array:
  """The same forward, differentiated by JAX; a baseline and test reference.

  Its reverse pass materialises about K*K input-sized temporaries on CPU.
  """
  ho, wo, groups = _output_shape(x, kernel, kernel_size, stride)
  b, _, _, c = x.shape
  dtype = jnp.result_type(x, kernel)
  acc_dtype = _acc_dtype(x, kernel)
  x_pad = _padded_groups(x, kernel_size, groups)
  # One split rather than K*K indexing ops: its transpose is a single
  # concatenate, not K*K pad-and-adds of kernel-sized gradients.
  taps = jnp.split(kernel, kernel_size * kernel_size, axis=3)
  out = jnp.zeros((b, ho, wo, groups, c // groups), acc_dtype)
  for dy in range(kernel_size):
    for dx in range(kernel_size):
      window = _window(x_pad, dy, dx, ho, wo, stride)
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
