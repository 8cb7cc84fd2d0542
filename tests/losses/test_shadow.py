"""The Shadow loss: hand-computed values, and its relation to the triplet loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax import losses
from metricjax.losses import shadow
from metricjax.losses import triplet
from loss_harness import our_value_and_grad
from loss_harness import random_batch

# Op by op: tests/losses/conftest.py says why.
pytestmark = pytest.mark.eager


def test_shadow_hand_computed():
  # Unnormalised: ||a|| = 2, shadows 2 and -1, so delta+ = 0 (p = a + 10v,
  # v _|_ a) and delta- = 3; margin 4 leaves 1.
  a, p, n = jnp.array([[2.0, 0.0]]), jnp.array([[2.0, 10.0]]), jnp.array(
      [[-1.0, 0.0]])
  assert float(shadow.shadow_loss(a, p, n, margin=4.0, normalize=False)) == 1.0
  np.testing.assert_allclose(
      shadow.shadow_distance(a, jnp.concatenate([p, n])), [[0.0, 3.0]])
  # Second triplet: ||a|| = 1, shadows 0.5 and 2: relu(0.5 - 1 + 1) = 0.5.
  a2 = jnp.array([[2.0, 0.0], [1.0, 0.0]])
  p2 = jnp.array([[2.0, 10.0], [0.5, 3.0]])
  n2 = jnp.array([[-1.0, 0.0], [2.0, -7.0]])
  np.testing.assert_allclose(
      shadow.shadow_loss(a2, p2, n2, margin=1.0, normalize=False),
      (0.0 + 0.5) / 2)
  # Normalised: delta = 1 - cos; cos(a, p) = 1/sqrt(2), cos(a, n) = 0.
  value = shadow.shadow_loss(jnp.array([[3.0, 0.0]]), jnp.array([[1.0, 1.0]]),
                             jnp.array([[0.0, 5.0]]), margin=1.0)
  np.testing.assert_allclose(value, (1 - 2 ** -0.5) - 1.0 + 1.0, rtol=1e-6)


def test_shadow_safe_at_zero_anchor():
  zero = jnp.zeros((1, 3))
  p, n = jnp.ones((1, 3)), -jnp.ones((1, 3))
  for normalize in (True, False):
    value, grads = jax.value_and_grad(
        lambda a, p, n: shadow.shadow_loss(a, p, n, margin=0.3,
                                           normalize=normalize),
        argnums=(0, 1, 2))(zero, p, n)
    np.testing.assert_allclose(value, 0.3)  # both shadows are 0
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_shadow_is_half_squared_triplet_on_unit_norm():
  rng = np.random.default_rng(8)
  a, p, n = (rng.normal(size=(50, 16)).astype(np.float32) for _ in range(3))
  a, p, n = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, p, n))
  m = 0.3
  sq = lambda u, v: np.sum((u - v) ** 2, axis=1)
  triplet_value = np.mean(np.maximum(sq(a, p) - sq(a, n) + 2 * m, 0.0))
  for normalize in (True, False):
    np.testing.assert_allclose(
        shadow.shadow_loss(a, p, n, margin=m, normalize=normalize),
        0.5 * triplet_value, rtol=1e-5)


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
def test_shadow_margin_is_half_squared_triplet(mining):
  x, labels = random_batch(9, n=32, dim=16)
  m = 0.15
  value, grad = our_value_and_grad(shadow.shadow_margin_loss, x, labels, margin=m,
                      mining=mining)
  t_value, t_grad = our_value_and_grad(triplet.triplet_margin_loss, x, labels,
                          margin=2 * m, distance="squared_euclidean",
                          mining=mining)
  assert value > 0
  np.testing.assert_allclose(value, 0.5 * t_value, rtol=1e-5)
  np.testing.assert_allclose(grad, 0.5 * t_grad, rtol=1e-4, atol=1e-6)


def test_shadow_explicit_is_half_squared_triplet_on_unit_vectors():
  rng = np.random.default_rng(1)
  a, p, n = (rng.normal(size=(32, 8)).astype(np.float32) for _ in range(3))
  shadow = losses.shadow_loss(a, p, n, margin=0.1)
  triplet = losses.triplet_loss(a, p, n, margin=0.2, distance="squared_euclidean")
  np.testing.assert_allclose(float(shadow), 0.5 * float(triplet), rtol=1e-5)
