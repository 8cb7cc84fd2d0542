"""The optimiser's learning-rate groups: model, pretrained trunk, loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax import state as state_lib
from metricjax.config_utils import base_config
from metricjax.errors import UserError


def _config(**overrides):
  config = base_config()
  config.update(dict(learning_rate=1e-2, warmup_steps=0, total_steps=10,
                     weight_decay=0.0))
  config.update(overrides)
  return config


def _first_update(config):
  tree = {"model": {"trunk": {"w": jnp.ones(3)}, "embedding": {"w": jnp.ones(3)}},
          "loss": {"proxies": jnp.ones(3)}}
  tx = state_lib.create_optimizer(config)
  grads = jax.tree.map(jnp.ones_like, tree)
  updates, _ = tx.update(grads, tx.init(tree), tree)
  return jax.tree.map(lambda u: float(jnp.abs(u).mean()), updates)


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_backbone_lr_multiplier(optimizer):
  u = _first_update(_config(optimizer=optimizer, backbone_lr_multiplier=0.1,
                            loss=dict(param_lr_multiplier=100.0)))
  head = u["model"]["embedding"]["w"]
  assert head > 0
  np.testing.assert_allclose(u["model"]["trunk"]["w"], 0.1 * head, rtol=1e-5)
  np.testing.assert_allclose(u["loss"]["proxies"], 100.0 * head, rtol=1e-5)


def test_one_group_when_no_multiplier():
  u = _first_update(_config())
  assert u["model"]["trunk"]["w"] == u["model"]["embedding"]["w"]


def test_unknown_optimizer():
  with pytest.raises(UserError, match="config.optimizer='sgdx'"):
    state_lib.create_optimizer(_config(optimizer="sgdx"))


def test_rmsprop_is_pytorchs():
  # The Reality Check trains with torch.optim.RMSprop (coupled weight
  # decay, eps outside the root); gradients and weights small enough that
  # eps matters.
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  w0 = 1e-3 * rng.normal(size=5).astype(np.float32)
  grads = [1e-6 * rng.normal(size=5).astype(np.float32) for _ in range(6)]
  p = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.RMSprop([p], lr=1e-3, alpha=0.99, eps=1e-8,
                            weight_decay=1e-4, momentum=0.9)
  for g in grads:
    opt.zero_grad()
    p.grad = torch.tensor(g)
    opt.step()
  config = _config(optimizer="rmsprop", momentum=0.9, learning_rate=1e-3,
                   weight_decay=1e-4, lr_schedule="constant")
  tx = state_lib.create_optimizer(config)
  w = jnp.asarray(w0)
  opt_state = tx.init(w)
  for g in grads:
    updates, opt_state = tx.update(jnp.asarray(g), opt_state, w)
    w = w + updates
  np.testing.assert_allclose(np.asarray(w), p.detach().numpy(), rtol=1e-4,
                             atol=1e-9)
  assert np.abs(np.asarray(w) - w0).max() > 1e-3  # It moved.


def test_constant_schedule():
  config = _config(learning_rate=1e-6, warmup_steps=0, total_steps=100,
                   lr_schedule="constant")
  schedule = state_lib.learning_rate_schedule(config)
  assert float(schedule(0)) == float(schedule(99)) == pytest.approx(1e-6)
  warm = state_lib.learning_rate_schedule(_config(
      learning_rate=1e-6, warmup_steps=10, total_steps=100,
      lr_schedule="constant"))
  assert float(warm(5)) == pytest.approx(5e-7)
  assert float(warm(50)) == pytest.approx(1e-6)
