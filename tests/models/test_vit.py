"""ViT-S/16 against timm's own (random init, 32 px: a 2x2 patch grid)."""

import jax
import numpy as np
import pytest

import reference_nets
from metricjax import models
from metricjax.errors import UserError
from metricjax.models import vit
from metricjax.models import weights


def test_matches_timm(tmp_path):
  ref = reference_nets.reference("vit_s16", 32)
  flat, meta = weights.convert_torch(ref.state_dict(), "vit_s16")
  assert meta["image_size"] == 32
  path = tmp_path / "vit.npz"
  weights.save_npz(path, flat, meta)
  module, variables = models.load_backbone(path)
  x = reference_nets.images(2, 32)
  want = reference_nets.forward(ref, x)
  got = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(
      variables, x))
  assert got.shape == want.shape == (2, 384)
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=1e-4 * np.abs(want).max())


def test_image_size_the_patch_grid_does_not_divide():
  x = np.zeros((1, 40, 40, 3), np.float32)
  with pytest.raises(UserError, match="not a multiple of the ViT's patch"):
    vit.vit_s16().init(jax.random.key(0), x, train=False)


def test_frozen_bn_on_a_vit():
  with pytest.raises(UserError, match="no batch norm to freeze"):
    models.EmbeddingNet(backbone="vit_s16", frozen_bn=True)
