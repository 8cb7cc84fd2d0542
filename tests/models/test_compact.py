"""Compact nets: every variant runs, hybrid1 fits the paper's budget."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from metricjax.errors import UserError
from metricjax.models import CompactNet
from metricjax.models import count_params
from metricjax.models import create_model
from metricjax.models import param_bytes

SHAPES = [(2, 28, 28, 1), (2, 32, 32, 3)]


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def _variables(model, images):
  """Random variables of the shapes model.init gives.

  Compiling Flax's init (an RNG pipeline per parameter) takes seconds per
  model on CPU; tracing it for shapes and drawing values with numpy does
  not, and the forward pass is what these tests check.
  """
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0), images)
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    if path[0].key == "batch_stats":
      return np.ones(leaf.shape, leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _run(model, images):
  variables = _variables(model, images)
  outputs, updates = jax.jit(functools.partial(
      model.apply, train=True, mutable=["batch_stats"]))(variables, images)
  return variables, outputs, updates


@pytest.mark.parametrize("variant", ["hybrid1", "hybrid3", "conv_only",
                                     "involution_only"])
@pytest.mark.parametrize("shape", SHAPES)
def test_variant_runs(variant, shape):
  model = CompactNet(variant=variant, num_classes=10)
  _, outputs, updates = _run(model, _images(shape))
  assert outputs["embedding"].shape == (2, 64)
  assert outputs["logits"].shape == (2, 10)
  np.testing.assert_allclose(
      np.linalg.norm(outputs["embedding"], axis=-1), 1.0, rtol=1e-5)
  assert updates["batch_stats"]


@pytest.mark.parametrize("shape", SHAPES)
def test_hybrid1_size(shape):
  model = CompactNet(variant="hybrid1", num_classes=10)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), jnp.zeros(shape, jnp.uint8))
  params = variables["params"]
  assert 105_000 <= count_params(params) <= 125_000
  assert param_bytes(params) == 4 * count_params(params) < 1_000_000
  assert sum("involution" in name for name in params) == 1


def test_float_input_matches_uint8():
  model = CompactNet(variant="hybrid1", activation="relu")
  images = _images(SHAPES[0])
  variables = _variables(model, images)
  apply = jax.jit(functools.partial(model.apply, train=False))
  np.testing.assert_allclose(
      apply(variables, images)["embedding"],
      apply(variables, images.astype(np.float32) / 255)["embedding"],
      rtol=1e-5, atol=1e-6)
  assert "logits" not in apply(variables, images)


@pytest.mark.parametrize("fields,message", [
    (dict(variant="resnet"), "conv_only"),
    (dict(variant="hybrid5"), "hybrid4"),
    (dict(variant="hybrid0"), "involution_only"),
    (dict(activation="tanh"), "gelu"),
])
def test_bad_settings_raise_user_error(fields, message):
  with pytest.raises(UserError, match=message):
    CompactNet(**fields)


def test_create_model_from_config_dict():
  config = ml_collections.ConfigDict(dict(
      name="compact", variant="hybrid2", activation="relu", embedding_dim=16,
      widths=[8, 16], dtype="bfloat16"))
  model = create_model(config, num_classes=3)
  assert isinstance(model, CompactNet)
  assert model.widths == (8, 16) and model.dtype == jnp.bfloat16
  images = jnp.zeros((2, 12, 12, 3), jnp.uint8)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), images)
  outputs = jax.eval_shape(functools.partial(model.apply, train=False),
                           variables, images)
  assert outputs["embedding"].shape == (2, 16)
  assert outputs["logits"].shape == (2, 3)
  # bfloat16 compute, float32 parameters and outputs.
  assert outputs["embedding"].dtype == jnp.float32
  assert all(x.dtype == jnp.float32
             for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("config,message", [
    (dict(name="vit"), "compact"),
    (dict(variant="hybrid1"), "compact"),
    (dict(name="compact", depth=3), "embedding_dim"),
    (dict(name="compact", num_classes=5), "disagrees"),
])
def test_create_model_rejects_bad_config(config, message):
  with pytest.raises(UserError, match=message):
    create_model(config, num_classes=10)
