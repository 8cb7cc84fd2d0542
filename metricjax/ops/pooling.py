"""2x2, stride-2 max pooling as a reshape and a max, with flax's gradient.

Same values and gradients as `flax.linen.max_pool(x, (2, 2), (2, 2),
padding)`, ties included (the gradient goes to the first maximum of a
window, in row-major order, as there and in PyTorch), but differentiated
without XLA's select-and-scatter: the GPU compiler rewrites that into a
reduce-window carrying three int32 index arrays beside a float32 copy of
the values (whatever the compute dtype), and XLA:CPU runs it as a slow
scatter. Here the forward keeps one int8 per output (which of the four won)
and the backward is a one-hot multiply. Measured in docs/accelerators.md
(deviceless H100 and TPU v5e programs; this CPU's step).

Ties are common, not a corner case: a flat image background gives equal
activations across a window, and splitting their gradient instead (the
gradient of a plain `max`) changes training.
"""

import contextlib
import contextvars

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool_2x2(x: jax.Array, padding: str = "SAME") -> jax.Array:
  """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C) ("SAME": an odd last row or
  column is pooled alone) or (B, H//2, W//2, C) ("VALID": it is dropped).

  On TPU, whose select-and-scatter is native, flax's max_pool moves fewer
  bytes (docs/accelerators.md): the compiled program picks it there, unless
  traced inside `portable()`."""
  if _PORTABLE.get():
    return _max_pool_2x2(x, padding)
  return jax.lax.platform_dependent(
      x, tpu=lambda x: nn.max_pool(x, (2, 2), (2, 2), padding),
      default=lambda x: _max_pool_2x2(x, padding))


# Converters that read the traced program (jax2onnx for --format=onnx)
# know no platform_dependent: they trace the one formulation.
_PORTABLE = contextvars.ContextVar("portable_pooling", default=False)


@contextlib.contextmanager
def portable():
  """Traces max_pool_2x2 without its per-platform choice (same values)."""
  token = _PORTABLE.set(True)
  try:
    yield
  finally:
    _PORTABLE.reset(token)


def _max_pool_2x2(x: jax.Array, padding: str) -> jax.Array:
  _, h, w, _ = x.shape
  if padding == "SAME":
    if h % 2 or w % 2:
      x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)),
                  constant_values=-jnp.inf)
    return _pool(x)
  if padding == "VALID":
    return _pool(x[:, :h - h % 2, :w - w % 2])
  raise ValueError(f"padding={padding!r}: use 'SAME' or 'VALID'.")


def _windows(x: jax.Array) -> jax.Array:
  """(B, H, W, C), H and W even -> (B, H/2, W/2, C, 4), window row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)


@jax.custom_vjp
def _pool(x: jax.Array) -> jax.Array:
  return _windows(x).max(axis=-1)


def _pool_fwd(x):
  windows = _windows(x)
  # argmax takes the first maximum: flax's (and PyTorch's) tie-break.
  return windows.max(axis=-1), jnp.argmax(windows, axis=-1).astype(jnp.int8)


def _pool_bwd(winner, g):
  b, h2, w2, c = g.shape
  one_hot = jax.nn.one_hot(winner, 4, dtype=g.dtype) * g[..., None]
  dx = one_hot.reshape(b, h2, w2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return (dx.reshape(b, 2 * h2, 2 * w2, c),)


_pool.defvjp(_pool_fwd, _pool_bwd)
