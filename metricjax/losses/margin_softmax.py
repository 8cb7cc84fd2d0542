"""Additive-margin softmax losses: CosFace, ArcFace and Sub-center ArcFace.

Same numbers as pytorch-metric-learning's CosFaceLoss(num_classes,
embedding_size, margin, scale), ArcFaceLoss(..., margin in degrees, scale) and
SubCenterArcFaceLoss(..., sub_centers) with their default (mean) reducer: the
mean softmax cross-entropy of scale * cos(x, W[:, c]), the target class's
cosine replaced by cos - margin (CosFace) or cos(theta + margin) (ArcFace).
`W` is PML's `W`, (dim, num_classes) or for sub-centres (dim, num_classes *
sub_centers) with class c's centres in columns c * sub_centers + k;
`init_*` draws it as PML does (normal_, N(0, 1)).

One deliberate difference: PML takes theta = acos(clamp(cos)) and then
cos(theta + m), whose gradient is infinite at cos = +-1 (a sample on its
class vector). Here cos(theta + m) = cos cos m - sin theta sin m with sin theta
= sqrt(1 - cos^2) under a safe sqrt: the same values (to rounding), finite
gradients.

None takes a reference set (PML raises on `ref_emb`). `mask` drops padded
rows from the mean.
"""

import math

import jax
import jax.numpy as jnp

from metricjax.losses import pairs
from metricjax.ops import similarity


def _init_w(rng, embedding_dim, columns):
  return {"W": jax.random.normal(rng, (embedding_dim, columns), jnp.float32)}


def init_cosface_loss(rng: jax.Array, *, num_classes: int, embedding_dim: int,
                      **_) -> dict[str, jax.Array]:
  """PML's default weight init, normal_: N(0, 1), W of (dim, num_classes)."""
  return _init_w(rng, embedding_dim, num_classes)


def init_arcface_loss(rng: jax.Array, *, num_classes: int, embedding_dim: int,
                      **_) -> dict[str, jax.Array]:
  """PML's default weight init, normal_: N(0, 1), W of (dim, num_classes)."""
  return _init_w(rng, embedding_dim, num_classes)


def init_subcenter_arcface_loss(rng: jax.Array, *, num_classes: int,
                                embedding_dim: int, sub_centers: int = 3,
                                **_) -> dict[str, jax.Array]:
  """N(0, 1), W of (dim, num_classes * sub_centers), as PML."""
  return _init_w(rng, embedding_dim, num_classes * sub_centers)


def _target_cross_entropy(cos, labels, target_logit, scale, mask):
  """Mean CE of scale * cos with the label column replaced by target_logit."""
  onehot = labels[:, None] == jnp.arange(cos.shape[1])[None, :]
  logits = scale * jnp.where(onehot, target_logit[:, None], cos)
  log_p = jax.nn.log_softmax(logits, axis=1)
  nll = -jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]
  return pairs.masked_mean(nll, mask)


def _target_cos(cos, labels):
  return jnp.take_along_axis(cos, labels[:, None], axis=1)[:, 0]


def cosface_loss(embeddings: jax.Array, labels: jax.Array, *, W: jax.Array,
                 margin: float = 0.35, scale: float = 64.0,
                 mask: jax.Array | None = None) -> jax.Array:
  """CosFace / AM-softmax (Wang et al. 2018): target logit cos - margin.

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    W: (D, num_classes).
    margin: subtracted from the target cosine; scale: multiplies the logits.
    mask: optional (N,) bool; False rows are padding.
  """
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  cos = similarity.cosine_similarity(x, W.T)
  return _target_cross_entropy(cos, labels, _target_cos(cos, labels) - margin,
                               scale, mask)


def _arc_margin(c: jax.Array, margin_rad: float) -> jax.Array:
  """PML ArcFace's target logit: cos(theta + m) while theta <= pi - m, else
  cos(theta) - m sin(m) (keeps it decreasing in theta)."""
  c = jnp.clip(c, -1.0, 1.0)
  sin = similarity.safe_sqrt(1.0 - jnp.square(c))
  cos_plus = c * math.cos(margin_rad) - sin * math.sin(margin_rad)
  # theta <= pi - m, decided on the angle as PML does.
  in_range = jnp.arccos(jax.lax.stop_gradient(c)) <= math.pi - margin_rad
  return jnp.where(in_range, cos_plus, c - margin_rad * math.sin(margin_rad))


def arcface_loss(embeddings: jax.Array, labels: jax.Array, *, W: jax.Array,
                 margin: float = 28.6, scale: float = 64.0,
                 mask: jax.Array | None = None) -> jax.Array:
  """ArcFace (Deng et al., CVPR 2019): target logit cos(theta + margin).

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    W: (D, num_classes).
    margin: the additive angular margin in degrees (PML's unit).
    scale: multiplies the logits.
    mask: optional (N,) bool; False rows are padding.
  """
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  cos = similarity.cosine_similarity(x, W.T)
  target = _arc_margin(_target_cos(cos, labels), math.radians(margin))
  return _target_cross_entropy(cos, labels, target, scale, mask)


def subcenter_arcface_loss(embeddings: jax.Array, labels: jax.Array, *,
                           W: jax.Array, margin: float = 28.6,
                           scale: float = 64.0, sub_centers: int = 3,
                           mask: jax.Array | None = None) -> jax.Array:
  """Sub-center ArcFace (Deng et al., ECCV 2020): ArcFace on the cosine to
  each class's closest of its sub_centers centres.

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    W: (D, num_classes * sub_centers); column c * sub_centers + k is class
      c's centre k, as in PML.
    margin (degrees), scale: as `arcface_loss`.
    sub_centers: centres per class (static).
    mask: optional (N,) bool; False rows are padding.
  """
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  cos = similarity.cosine_similarity(x, W.T)
  cos = jnp.max(cos.reshape(cos.shape[0], -1, sub_centers), axis=2)
  target = _arc_margin(_target_cos(cos, labels), math.radians(margin))
  return _target_cross_entropy(cos, labels, target, scale, mask)
