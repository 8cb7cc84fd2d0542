"""Proxy losses: Proxy-Anchor, Proxy-NCA and Normalized Softmax.

Same numbers as pytorch-metric-learning's ProxyAnchorLoss(num_classes,
embedding_size, margin, alpha), ProxyNCALoss(num_classes, embedding_size,
softmax_scale) and NormalizedSoftmaxLoss(num_classes, embedding_size,
temperature) with their default distances and reducers. The learnable class
vectors are arguments in PML's layout: `proxies` (num_classes, dim) as
`ProxyAnchorLoss.proxies` / `ProxyNCALoss.proxies`, `W` (dim, num_classes) as
`NormalizedSoftmaxLoss.W`; `init_*` draws them as PML initialises them.

`proxy_nca_per_row` and `normalized_softmax_per_row` return the rows'
unreduced losses and which rows count, for `build` (compose.py) to weight by
a miner and reduce as PML does. None takes a reference set (PML raises on
`ref_emb` for them).
`mask` drops padded rows: they are in no sum and no count.
"""

import math

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity


def init_proxy_anchor_loss(rng: jax.Array, *, num_classes: int,
                           embedding_dim: int, **_) -> dict[str, jax.Array]:
  """PML's kaiming_normal_(mode="fan_out"): N(0, 2 / num_classes)."""
  std = math.sqrt(2.0 / num_classes)
  return {"proxies": std * jax.random.normal(
      rng, (num_classes, embedding_dim), jnp.float32)}


def init_proxy_nca_loss(rng: jax.Array, *, num_classes: int,
                        embedding_dim: int, **_) -> dict[str, jax.Array]:
  """PML's default weight init, normal_: N(0, 1)."""
  return {"proxies": jax.random.normal(rng, (num_classes, embedding_dim),
                                       jnp.float32)}


def init_normalized_softmax_loss(rng: jax.Array, *, num_classes: int,
                                 embedding_dim: int,
                                 **_) -> dict[str, jax.Array]:
  """PML's default weight init, normal_: N(0, 1), W of (dim, num_classes)."""
  return {"W": jax.random.normal(rng, (embedding_dim, num_classes),
                                 jnp.float32)}


def proxy_anchor_loss(embeddings: jax.Array, labels: jax.Array, *,
                      proxies: jax.Array, margin: float = 0.1,
                      alpha: float = 32.0,
                      mask: jax.Array | None = None,
                      miner_weights: jax.Array | None = None) -> jax.Array:
  """Proxy-Anchor (Kim et al., CVPR 2020).

  With s the cosine of sample and proxy: for each proxy p,
  log(1 + sum_{x of class p} e^{-alpha (s - margin)}) averaged over the
  proxies with a sample in the batch, plus
  log(1 + sum_{x not of class p} e^{alpha (s + margin)}) averaged over all
  proxies (PML's DivisorReducer divisors).

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    proxies: (num_classes, D).
    margin, alpha: the margin and scale.
    mask: optional (N,) bool; False rows are padding.
    miner_weights: optional (N,) rows' weights from a miner (PML's
      convert_to_weights); PML adds weight - 1 to every exponent of the row.
  """
  num_classes = proxies.shape[0]
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  cos = similarity.cosine_similarity(x, proxies)  # (N, C)
  same = labels[:, None] == jnp.arange(num_classes)[None, :]
  valid = True if mask is None else mask[:, None]
  pos, neg = same & valid, ~same & valid
  shift = 0.0 if miner_weights is None else (miner_weights - 1.0)[:, None]
  # Over the batch (axis 0), one term per proxy.
  pos_term = pairs.masked_logsumexp(alpha * (margin - cos) + shift, pos,
                                    axis=0, add_one=True)
  neg_term = pairs.masked_logsumexp(alpha * (cos + margin) + shift, neg,
                                    axis=0, add_one=True)
  with_pos = jnp.sum(jnp.any(pos, axis=0))
  pos_loss = jnp.sum(pos_term) / jnp.maximum(with_pos, 1).astype(cos.dtype)
  return pos_loss + jnp.sum(neg_term) / num_classes


def proxy_nca_per_row(embeddings: jax.Array, labels: jax.Array, *,
                      proxies: jax.Array, softmax_scale: float = 1.0,
                      mask: jax.Array | None = None, distance=None):
  """`proxy_nca_loss`'s (per-row losses, rows that count); distance: a
  losses.distances.Distance of rows to proxies, by default PML's
  LpDistance(power=2) on normalised rows."""
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  if distance is None:
    logits = -softmax_scale * similarity.pairwise_distance(
        similarity.l2_normalize(x), similarity.l2_normalize(proxies),
        kind="squared_euclidean")
  else:
    mat = distance.fn(x, proxies)
    logits = softmax_scale * (mat if distance.is_inverted else -mat)
  log_p = jax.nn.log_softmax(logits, axis=1)
  log_p = jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]
  valid = jnp.exp(jax.lax.stop_gradient(log_p)) != 0
  if mask is not None:
    valid &= mask
  return -log_p, valid


def proxy_nca_loss(embeddings: jax.Array, labels: jax.Array, *,
                   proxies: jax.Array, softmax_scale: float = 1.0,
                   mask: jax.Array | None = None) -> jax.Array:
  """Proxy-NCA (Movshovitz-Attias et al., ICCV 2017), PML's form.

  Softmax cross-entropy over the logits -softmax_scale * ||x - p||^2 of the
  L2-normalised sample and proxies, averaged over the samples. As PML, a
  sample whose own-class probability underflows to exactly 0 is left out of
  the mean (it would be inf).

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    proxies: (num_classes, D).
    softmax_scale: the logits' scale.
    mask: optional (N,) bool; False rows are padding.
  """
  return pairs.masked_mean(*proxy_nca_per_row(
      embeddings, labels, proxies=proxies, softmax_scale=softmax_scale,
      mask=mask))


def normalized_softmax_per_row(embeddings: jax.Array, labels: jax.Array, *,
                               W: jax.Array, temperature: float = 0.05,
                               mask: jax.Array | None = None, distance=None):
  """`normalized_softmax_loss`'s (per-row losses, rows that count);
  distance: a losses.distances.Distance of rows to the normalised class
  vectors, by default PML's DotProductSimilarity (normalised: cosine)."""
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  if distance is None:
    logits = similarity.cosine_similarity(x, W.T) / temperature
  else:
    mat = distance.fn(x, similarity.l2_normalize(W.T))
    logits = (mat if distance.is_inverted else -mat) / temperature
  log_p = jax.nn.log_softmax(logits, axis=1)
  nll = -jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]
  return nll, jnp.ones(nll.shape, bool) if mask is None else mask


def normalized_softmax_loss(embeddings: jax.Array, labels: jax.Array, *,
                            W: jax.Array, temperature: float = 0.05,
                            mask: jax.Array | None = None) -> jax.Array:
  """Normalized Softmax (Zhai & Wu, BMVC 2019; NormFace).

  Mean softmax cross-entropy of cos(x, W[:, c]) / temperature.

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    W: (D, num_classes), one column per class.
    temperature: divides the cosines.
    mask: optional (N,) bool; False rows are padding.
  """
  return pairs.masked_mean(*normalized_softmax_per_row(
      embeddings, labels, W=W, temperature=temperature, mask=mask))
