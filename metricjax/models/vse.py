"""Joint image-caption embedding model (VSE / VSE++ on precomputed features).

Image side: one linear map of a frozen image feature (FNE or fc7) to the
joint space, L2-normalised. Caption side: models.text_encoder.GRUTextEncoder.
Matching pairs score high under the dot product of the two embeddings.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metricjax.models.text_encoder import GRUTextEncoder
from metricjax.ops.similarity import l2_normalize


class VSEModel(nn.Module):
  """(image features, caption ids, lengths) -> (image_emb, text_emb).

  Attributes:
    vocab_size: number of word ids.
    embed_dim: joint space width (1024 in Kiros et al.; 1536-2048 in the FNE
      runs).
    word_dim: word embedding width.
    dtype: compute dtype; parameters stay float32.
  """
  vocab_size: int
  embed_dim: int = 1024
  word_dim: int = 300
  dtype: Any = jnp.float32

  def setup(self):
    # Xavier-uniform weights and zero bias, as VSE++'s EncoderImagePrecomp.
    self.image_proj = nn.Dense(self.embed_dim, dtype=self.dtype,
                               kernel_init=nn.initializers.xavier_uniform())
    self.text_encoder = GRUTextEncoder(self.vocab_size, self.word_dim,
                                       self.embed_dim, dtype=self.dtype)

  def encode_image(self, features: jax.Array) -> jax.Array:
    # FNE features arrive as int8 {-1, 0, 1}; compute in the float dtype.
    x = self.image_proj(jnp.asarray(features).astype(self.dtype))
    return l2_normalize(x.astype(jnp.float32))

  def encode_text(self, ids: jax.Array, lengths: jax.Array) -> jax.Array:
    return self.text_encoder(ids, lengths)

  def __call__(self, features, ids, lengths) -> tuple[jax.Array, jax.Array]:
    return self.encode_image(features), self.encode_text(ids, lengths)
