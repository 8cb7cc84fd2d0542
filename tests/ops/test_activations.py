"""The erf form of exact GELU is jax.nn.gelu(approximate=False)."""

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.ops import activations


def test_gelu_equals_exact_gelu_values_and_gradients():
  x = jnp.concatenate([jnp.linspace(-12.0, 12.0, 20001),
                       jax.random.normal(jax.random.key(0), (4096,)) * 3])
  exact = lambda v: jax.nn.gelu(v, approximate=False)
  np.testing.assert_allclose(activations.gelu(x), exact(x), atol=1e-6,
                             rtol=0)
  grad = jax.vmap(jax.grad(activations.gelu))(x)
  np.testing.assert_allclose(grad, jax.vmap(jax.grad(exact))(x), atol=1e-6,
                             rtol=0)
  # Not the tanh approximation, which differs by up to ~5e-4.
  approx = jax.nn.gelu(x, approximate=True)
  assert float(jnp.max(jnp.abs(activations.gelu(x) - approx))) > 1e-4


def test_gelu_keeps_the_dtype():
  x = jnp.linspace(-3, 3, 7, dtype=jnp.bfloat16)
  assert activations.gelu(x).dtype == jnp.bfloat16
