"""The VSE model: an image projection and a caption encoder, both unit norm."""

import jax
import numpy as np

from metricjax.models.vse import VSEModel


def test_vse_model_shapes_and_norms():
  model = VSEModel(vocab_size=12, embed_dim=8, word_dim=4)
  feats = np.array([[1, 0, -1, 1, 0, 0]] * 3, np.int8)
  ids = np.array([[2, 3, 0], [4, 0, 0], [5, 6, 7]], np.int32)
  lengths = np.array([2, 1, 3], np.int32)
  params = jax.jit(model.init)(jax.random.key(0), feats, ids, lengths)
  img, txt = jax.jit(model.apply)(params, feats, ids, lengths)
  assert img.shape == txt.shape == (3, 8)
  np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      model.apply(params, feats, method=VSEModel.encode_image), img, atol=1e-6)
