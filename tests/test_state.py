"""The optimiser's learning-rate groups: model, pretrained trunk, loss."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from metricjax import state as state_lib
from metricjax.config_utils import add_shared_fields
from metricjax.errors import UserError


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      learning_rate=1e-2, warmup_steps=0, total_steps=10, weight_decay=0.0,
      loss=dict(param_lr_multiplier=1.0)))
  add_shared_fields(config)
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
