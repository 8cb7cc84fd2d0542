"""GRU caption encoder of the VSE pipeline (Kiros et al. 2014, VSE++).

Word embedding -> one GRU layer; the state after the last real word,
L2-normalised, is the caption embedding. Padding is ignored: nn.RNN with
seq_lengths keeps every step's carry and returns the one at length - 1, so
the padded steps that follow never reach the output.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metricjax.ops.similarity import l2_normalize


def uniform_init(scale: float):
  """U(-scale, scale), VSE++'s word embedding initialiser."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class GRUTextEncoder(nn.Module):
  """(ids (B, L) int, lengths (B,) int >= 1) -> (B, hidden_dim) embeddings.

  Attributes:
    vocab_size: number of word ids (text.Vocabulary's len).
    word_dim: word embedding width (300 in VSE++).
    hidden_dim: GRU state width = joint embedding width.
    normalize: L2-normalise the output.
    dtype: compute dtype; parameters stay float32.
  """
  vocab_size: int
  word_dim: int = 300
  hidden_dim: int = 1024
  normalize: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, lengths: jax.Array) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.word_dim, dtype=self.dtype,
                 embedding_init=uniform_init(0.1), name="embed")(ids)
    # A zero length would select the carry at index -1, the last padded step;
    # text.Vocabulary never encodes an empty caption.
    lengths = jnp.maximum(jnp.asarray(lengths, jnp.int32), 1)
    gru = nn.RNN(nn.GRUCell(self.hidden_dim, dtype=self.dtype), name="gru")
    carry, _ = gru(x, seq_lengths=lengths, return_carry=True)
    carry = carry.astype(jnp.float32)
    return l2_normalize(carry) if self.normalize else carry
