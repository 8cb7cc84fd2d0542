"""The GRU caption encoder."""

import jax
import numpy as np

from metricjax.models.text_encoder import GRUTextEncoder


def test_gru_encoder_ignores_padding():
  enc = GRUTextEncoder(vocab_size=20, word_dim=8, hidden_dim=16)
  ids = np.array([[5, 6, 7, 0], [3, 4, 0, 0]], np.int32)
  lengths = np.array([3, 2], np.int32)
  params = jax.jit(enc.init)(jax.random.key(0), ids, lengths)
  apply = jax.jit(enc.apply)
  out = apply(params, ids, lengths)
  assert out.shape == (2, 16)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
  # More padding, and garbage in the padded positions: same embeddings.
  longer = np.pad(ids, ((0, 0), (0, 5)))
  longer[:, 4:] = 9
  longer[1, 2:4] = 11
  np.testing.assert_allclose(apply(params, longer, lengths), out, atol=1e-6)
  # The lengths matter: without them the padding would be read.
  assert not np.allclose(apply(params, ids, np.array([4, 4])), out, atol=1e-3)
  # Row independence: each caption alone gives its batched embedding.
  np.testing.assert_allclose(apply(params, ids[1:, :2], lengths[1:]), out[1:],
                             atol=1e-6)
