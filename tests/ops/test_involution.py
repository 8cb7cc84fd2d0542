"""The involution op against its reference, PyTorch, and finite differences."""

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from metricjax.ops import involution
from metricjax.ops import involution_reference
from metricjax.ops.involution import involution_autodiff

# (groups, kernel_size, stride, height, width, channels): every G, K and
# stride appears with odd and even sizes, without the full cross product's
# compile time.
CASES = [
    (1, 3, 1, 8, 8, 4),
    (2, 5, 2, 7, 9, 4),
    (4, 7, 1, 9, 6, 8),
    (4, 3, 2, 8, 7, 8),
    (2, 7, 2, 10, 11, 6),
    (1, 5, 1, 5, 7, 3),
    (2, 3, 1, 7, 6, 4),
    (1, 5, 2, 6, 6, 2),
    (1, 1, 1, 3, 4, 2),
    # Over 16 channels per group take the two-level channel sum.
    (1, 3, 1, 5, 6, 40),
    (2, 3, 2, 5, 4, 34),
]


def _inputs(seed, groups, kernel_size, stride, height, width, channels,
            batch=2, dtype=np.float32):
  rng = np.random.default_rng(seed)
  ho, wo = -(-height // stride), -(-width // stride)
  x = rng.normal(size=(batch, height, width, channels)).astype(dtype)
  kernel = rng.normal(size=(batch, ho, wo, kernel_size**2, groups))
  cotangent = rng.normal(size=(batch, ho, wo, channels))
  return x, kernel.astype(dtype), cotangent.astype(dtype)


# Jitted: one compile per case is much cheaper than dispatching the K*K
# unrolled taps op by op.
@functools.partial(jax.jit, static_argnames=("fn", "kernel_size", "stride"))
def _output_and_grads(fn, x, kernel, cotangent, *, kernel_size, stride):
  out, vjp = jax.vjp(
      functools.partial(fn, kernel_size=kernel_size, stride=stride), x, kernel)
  return (out, *vjp(cotangent))


@pytest.mark.parametrize("groups,kernel_size,stride,height,width,channels",
                         CASES)
def test_matches_reference(groups, kernel_size, stride, height, width,
                           channels):
  args = _inputs(0, groups, kernel_size, stride, height, width, channels)
  kwargs = dict(kernel_size=kernel_size, stride=stride)
  out, grad_x, grad_kernel = _output_and_grads(involution, *args, **kwargs)
  expected = _output_and_grads(involution_reference, *args, **kwargs)
  assert out.shape == (2, -(-height // stride), -(-width // stride), channels)
  for got, want in zip((out, grad_x, grad_kernel), expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups,kernel_size,stride,height,width,channels",
                         [(2, 5, 2, 7, 9, 4), (4, 7, 1, 9, 6, 8)])
def test_matches_autodiff(groups, kernel_size, stride, height, width,
                          channels):
  # The benchmarks' "before": JAX's own gradients of the same forward.
  args = _inputs(5, groups, kernel_size, stride, height, width, channels)
  kwargs = dict(kernel_size=kernel_size, stride=stride)
  results = _output_and_grads(involution, *args, **kwargs)
  expected = _output_and_grads(involution_autodiff, *args, **kwargs)
  for got, want in zip(results, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch,groups,kernel_size,stride", [
    (3, 2, 3, 1), (1, 1, 3, 2), (2, 4, 5, 1)])
def test_in_situ_gradient(batch, groups, kernel_size, stride):
  # The cotangent computed from the op's own output, in the same program:
  # the backward splits dx over batch chunks for K = 3 (uneven for B = 3,
  # none for B = 1), which a given cotangent does not exercise the same way.
  x, kernel, _ = _inputs(8, groups, kernel_size, stride, 7, 6, 8,
                         batch=batch)

  def grads(fn):
    loss = lambda x, k: jnp.sum(
        fn(x, k, kernel_size=kernel_size, stride=stride) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)

  for got, want in zip(grads(involution), grads(involution_reference)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_backward_is_lean():
  # The point of the custom VJP: no K*K input-sized temporaries. XLA's own
  # count of the fwd+bwd temporaries must stay a few inputs' worth (padded
  # input and slack), where the autodiff version needs about K*K.
  x, kernel, cotangent = _inputs(6, 2, 5, 1, 16, 16, 32, batch=4)

  def temp_bytes(fn):
    compiled = _output_and_grads.lower(
        fn, x, kernel, cotangent, kernel_size=5, stride=1).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(involution) < 3 * x.nbytes
  assert temp_bytes(involution_autodiff) > 10 * x.nbytes


def test_check_grads():
  # A custom VJP has no forward mode: reverse only.
  with jax.enable_x64(True):
    x, kernel, _ = _inputs(1, 2, 3, 2, 5, 4, 4, batch=1, dtype=np.float64)
    fn = functools.partial(involution, kernel_size=3, stride=2)
    jax.test_util.check_grads(fn, (x, kernel), order=1, modes=("rev",))


def _torch_involution(x, weight, kernel_size, stride, groups):
  """The forward of d-li14/involution's involution_naive.py, NCHW."""
  torch = pytest.importorskip("torch")
  b, c = x.shape[:2]
  _, _, h, w = weight.shape
  weight = weight.view(b, groups, kernel_size**2, h, w).unsqueeze(2)
  unfold = torch.nn.functional.unfold(
      x, kernel_size, dilation=1, padding=(kernel_size - 1) // 2,
      stride=stride)
  out = unfold.view(b, groups, c // groups, kernel_size**2, h, w)
  return (weight * out).sum(dim=3).view(b, c, h, w)


@pytest.mark.parametrize("groups,kernel_size,stride,height,width,channels",
                         [(2, 3, 2, 7, 8, 32), (4, 5, 1, 6, 5, 8)])
def test_matches_official_pytorch(groups, kernel_size, stride, height, width,
                                  channels):
  torch = pytest.importorskip("torch")
  x, kernel, cotangent = _inputs(2, groups, kernel_size, stride, height, width,
                                 channels)
  out, grad_x, grad_kernel = _output_and_grads(
      involution, x, kernel, cotangent, kernel_size=kernel_size, stride=stride)

  # Official layouts: x (B, C, H, W), weight (B, G*K*K, Ho, Wo), G-major.
  b, ho, wo, k2, _ = kernel.shape
  x_t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  weight_t = torch.tensor(
      kernel.transpose(0, 4, 3, 1, 2).reshape(b, groups * k2, ho, wo),
      requires_grad=True)
  out_t = _torch_involution(x_t, weight_t, kernel_size, stride, groups)
  out_t.backward(torch.tensor(cotangent.transpose(0, 3, 1, 2)))

  tol = dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      out, out_t.detach().numpy().transpose(0, 2, 3, 1), **tol)
  np.testing.assert_allclose(
      grad_x, x_t.grad.numpy().transpose(0, 2, 3, 1), **tol)
  np.testing.assert_allclose(
      grad_kernel,
      weight_t.grad.numpy().reshape(b, groups, k2, ho, wo)
      .transpose(0, 3, 4, 2, 1), **tol)


def test_bfloat16_keeps_dtype():
  x, kernel, cotangent = _inputs(3, 2, 3, 1, 6, 6, 4)
  fn = jax.jit(functools.partial(involution, kernel_size=3))
  out = fn(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), fn(x, kernel),
                             rtol=0.05, atol=0.1)

  low = _output_and_grads(
      involution, x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16),
      cotangent.astype(jnp.bfloat16), kernel_size=3, stride=1)
  high = _output_and_grads(involution, x, kernel, cotangent, kernel_size=3,
                           stride=1)
  for got, want in zip(low, high):
    assert got.dtype == jnp.bfloat16
    # Summed in float32: only the bfloat16 inputs and outputs round.
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=0.05,
                               atol=0.15)
  # Mixed precision: each gradient takes its own primal's dtype.
  _, grad_x, grad_kernel = _output_and_grads(
      involution, x, kernel.astype(jnp.bfloat16), cotangent, kernel_size=3,
      stride=1)
  assert grad_x.dtype == jnp.float32 and grad_kernel.dtype == jnp.bfloat16


def test_vmap():
  # vmap over an extra leading axis batches the custom VJP's own rules.
  x, kernel, cotangent = _inputs(7, 2, 3, 2, 5, 6, 4)
  fn = functools.partial(_output_and_grads, involution, kernel_size=3,
                         stride=2)
  got = jax.vmap(fn)(x[:, None], kernel[:, None], cotangent[:, None])
  for got, want in zip(got, fn(x, kernel, cotangent)):
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("x_shape,kernel_shape,kwargs,message", [
    ((1, 4, 4, 4), (1, 4, 4, 9, 3), dict(kernel_size=3), "divide"),
    ((1, 4, 4, 4), (1, 4, 4, 16, 1), dict(kernel_size=4), "odd"),
    ((1, 5, 5, 4), (1, 5, 5, 9, 1), dict(kernel_size=3, stride=2),
     r"\(1, 3, 3, 9\)"),
    ((4, 4, 4), (1, 4, 4, 9, 1), dict(kernel_size=3), r"\(B, H, W, C\)"),
    ((1, 4, 4, 4), (1, 4, 4, 9, 1), dict(kernel_size=3, stride=0), "stride"),
])
def test_rejects_bad_shapes(x_shape, kernel_shape, kwargs, message):
  with pytest.raises(ValueError, match=message):
    involution(jnp.zeros(x_shape), jnp.zeros(kernel_shape), **kwargs)
