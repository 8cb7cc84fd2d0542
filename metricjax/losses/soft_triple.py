"""SoftTriple loss (Qian et al., ICCV 2019).

Same numbers as pytorch-metric-learning's `SoftTripleLoss(num_classes,
embedding_size, centers_per_class, la, gamma, margin)` with its
CosineSimilarity and default mean reducer: with s_ck the cosine of a sample
and centre k of class c, the class similarity S_c = sum_k softmax_k(s_ck /
gamma) s_ck, and the loss is the mean softmax cross-entropy of la * (S_c -
margin [c = label]). PML's version has no centre regulariser (the paper's tau
term); neither has this one.

`fc` is PML's `SoftTripleLoss.fc`, (dim, num_classes * centers_per_class),
class c's centres in columns c * centers_per_class + k; `init_soft_triple_loss`
draws it as PML (kaiming_uniform_(a=sqrt(5))). No reference set (PML raises
on `ref_emb`); `mask` drops padded rows from the mean.
"""

import math

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity


def init_soft_triple_loss(rng: jax.Array, *, num_classes: int,
                          embedding_dim: int, centers_per_class: int = 10,
                          **_) -> dict[str, jax.Array]:
  """kaiming_uniform_(a=sqrt(5)) of (dim, C K): U(+-1/sqrt(C K)), as PML."""
  columns = num_classes * centers_per_class
  bound = 1.0 / math.sqrt(columns)  # gain sqrt(1/3) * sqrt(3 / fan_in)
  return {"fc": jax.random.uniform(rng, (embedding_dim, columns), jnp.float32,
                                   -bound, bound)}


def soft_triple_per_row(embeddings: jax.Array, labels: jax.Array, *,
                        fc: jax.Array, centers_per_class: int = 10,
                        la: float = 20.0, gamma: float = 0.1,
                        margin: float = 0.01,
                        mask: jax.Array | None = None):
  """`soft_triple_loss`'s (per-row losses, rows that count), for `build`."""
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  s = similarity.cosine_similarity(x, fc.T)
  s = s.reshape(s.shape[0], -1, centers_per_class)
  class_sim = jnp.sum(jax.nn.softmax(s / gamma, axis=2) * s, axis=2)
  onehot = labels[:, None] == jnp.arange(class_sim.shape[1])[None, :]
  log_p = jax.nn.log_softmax(la * (class_sim - margin * onehot), axis=1)
  nll = -jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]
  return nll, jnp.ones(nll.shape, bool) if mask is None else mask


def soft_triple_loss(embeddings: jax.Array, labels: jax.Array, *,
                     fc: jax.Array, centers_per_class: int = 10,
                     la: float = 20.0, gamma: float = 0.1,
                     margin: float = 0.01,
                     mask: jax.Array | None = None) -> jax.Array:
  """SoftTriple loss of a labelled batch.

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    fc: (D, num_classes * centers_per_class), the centres.
    centers_per_class: K (static); la: the logits' scale; gamma: the
      temperature of the softmax over a class's centres; margin: subtracted
      from the target class similarity.
    mask: optional (N,) bool; False rows are padding.
  """
  return pairs.masked_mean(*soft_triple_per_row(
      embeddings, labels, fc=fc, centers_per_class=centers_per_class, la=la,
      gamma=gamma, margin=margin, mask=mask))
