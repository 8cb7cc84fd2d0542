"""ResNet-18/50 against torchvision's own (random init, non-trivial BN)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_nets
from metricjax import models
from metricjax.models import resnet
from metricjax.models import weights


def _converted(arch, size):
  ref = reference_nets.reference(arch, size)
  flat, meta = weights.convert_torch(ref.state_dict(), arch)
  return ref, flat, meta


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("resnet50", 32)])
def test_matches_torchvision(arch, size, tmp_path):
  ref, flat, meta = _converted(arch, size)
  x = reference_nets.images(2, size)
  want = reference_nets.forward(ref, x)
  path = tmp_path / f"{arch}.npz"
  weights.save_npz(path, flat, meta)
  module, variables = models.load_backbone(path)
  got = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(
      variables, x))
  assert got.shape == want.shape == (2, 512 if arch == "resnet18" else 2048)
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=1e-4 * np.abs(want).max())


def test_frozen_bn_is_the_same_function_and_not_trained():
  ref, flat, meta = _converted("resnet18", 32)
  x = reference_nets.images(2, 32)
  want = reference_nets.forward(ref, x)
  frozen = resnet.resnet18(frozen_bn=True)
  variables = weights.place(flat, weights.target_shapes(frozen, meta), "test")
  # Frozen: the affine parameters are not parameters at all.
  assert "scale" not in variables["params"]["bn1"] if "bn1" in variables[
      "params"] else True
  assert set(variables["batch_stats"]["bn1"]) == {"scale", "bias", "mean",
                                                   "var"}
  out, mutated = frozen.apply(variables, x, train=True,
                              mutable=["batch_stats"])
  np.testing.assert_allclose(out, want, rtol=0, atol=1e-4 * np.abs(want).max())
  # Train mode uses, and keeps, the stored statistics.
  jax.tree.map(np.testing.assert_array_equal, mutated["batch_stats"],
               variables["batch_stats"])


def test_avg_max_pooling_and_bfloat16():
  module = resnet.resnet18()
  x = jnp.asarray(reference_nets.images(2, 32))
  variables = module.init(jax.random.key(0), x, train=False)
  both = module.apply(variables, x, train=False, pooling="avg+max")
  avg = module.apply(variables, x, train=False, pooling="avg")
  mx = module.apply(variables, x, train=False, pooling="max")
  np.testing.assert_allclose(both, avg + mx, rtol=1e-6, atol=1e-6)
  half = resnet.resnet18(dtype=jnp.bfloat16).apply(variables, x, train=False)
  assert half.dtype == jnp.float32  # Pooled in float32 ...
  np.testing.assert_allclose(half, avg, rtol=0.1, atol=0.1 * np.abs(avg).max())
