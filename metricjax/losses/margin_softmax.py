"""Margin softmax losses: Large-Margin Softmax, SphereFace, CosFace, ArcFace
and Sub-center ArcFace.

Same numbers as pytorch-metric-learning's LargeMarginSoftmaxLoss(num_classes,
embedding_size, margin, scale), SphereFaceLoss(...), CosFaceLoss(...),
ArcFaceLoss(..., margin in degrees, scale) and SubCenterArcFaceLoss(...,
sub_centers) with their default (mean) reducer: the mean softmax
cross-entropy of logits built from cos(x, W[:, c]), the target class's cosine
replaced by cos(m theta) made monotonic (L-Softmax, SphereFace), cos - margin
(CosFace) or cos(theta + margin) (ArcFace). L-Softmax scales the logits by
||x|| ||W[:, c]|| scale, SphereFace by ||x|| scale, the others by scale.
`W` is PML's `W`, (dim, num_classes) or for sub-centres (dim, num_classes *
sub_centers) with class c's centres in columns c * sub_centers + k;
`init_*` draws it as PML does (normal_, N(0, 1)).

Each `*_per_row` form returns the rows' unreduced losses and which rows
count, for `build` (compose.py) to weight by a miner and reduce as PML does.

One deliberate difference (ArcFace, Sub-center ArcFace): PML takes theta =
acos(clamp(cos)) and then cos(theta + m), whose gradient is infinite at
cos = +-1 (a sample on its class vector). Here cos(theta + m) = cos cos m -
sin theta sin m with sin theta = sqrt(1 - cos^2) under a safe sqrt: the same
values (to rounding), finite gradients.

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


def init_large_margin_softmax_loss(rng: jax.Array, *, num_classes: int,
                                   embedding_dim: int,
                                   **_) -> dict[str, jax.Array]:
  """PML's default weight init, normal_: N(0, 1), W of (dim, num_classes)."""
  return _init_w(rng, embedding_dim, num_classes)


def init_sphereface_loss(rng: jax.Array, *, num_classes: int,
                         embedding_dim: int, **_) -> dict[str, jax.Array]:
  """PML's default weight init, normal_: N(0, 1), W of (dim, num_classes)."""
  return _init_w(rng, embedding_dim, num_classes)


def _rows(mask, n):
  return jnp.ones((n,), bool) if mask is None else mask


def _target_cross_entropy(cos, labels, target_logit, scale, mask):
  """(per-row CE of scale * cos with the label column replaced by
  target_logit, the rows that count); scale: a number or (N, C)."""
  onehot = labels[:, None] == jnp.arange(cos.shape[1])[None, :]
  logits = scale * jnp.where(onehot, target_logit[:, None], cos)
  log_p = jax.nn.log_softmax(logits, axis=1)
  nll = -jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]
  return nll, _rows(mask, nll.shape[0])


def _target_cos(cos, labels):
  return jnp.take_along_axis(cos, labels[:, None], axis=1)[:, 0]


def cosface_per_row(embeddings: jax.Array, labels: jax.Array, *,
                    W: jax.Array, margin: float = 0.35, scale: float = 64.0,
                    mask: jax.Array | None = None):
  """`cosface_loss`'s (per-row losses, rows that count)."""
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  cos = similarity.cosine_similarity(x, W.T)
  return _target_cross_entropy(cos, labels, _target_cos(cos, labels) - margin,
                               scale, mask)


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
  return pairs.masked_mean(*cosface_per_row(
      embeddings, labels, W=W, margin=margin, scale=scale, mask=mask))


def _arc_margin(c: jax.Array, margin_rad: float) -> jax.Array:
  """PML ArcFace's target logit: cos(theta + m) while theta <= pi - m, else
  cos(theta) - m sin(m) (keeps it decreasing in theta)."""
  c = jnp.clip(c, -1.0, 1.0)
  sin = similarity.safe_sqrt(1.0 - jnp.square(c))
  cos_plus = c * math.cos(margin_rad) - sin * math.sin(margin_rad)
  # theta <= pi - m, decided on the angle as PML does.
  in_range = jnp.arccos(jax.lax.stop_gradient(c)) <= math.pi - margin_rad
  return jnp.where(in_range, cos_plus, c - margin_rad * math.sin(margin_rad))


def arcface_per_row(embeddings: jax.Array, labels: jax.Array, *,
                    W: jax.Array, margin: float = 28.6, scale: float = 64.0,
                    mask: jax.Array | None = None):
  """`arcface_loss`'s (per-row losses, rows that count)."""
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  cos = similarity.cosine_similarity(x, W.T)
  target = _arc_margin(_target_cos(cos, labels), math.radians(margin))
  return _target_cross_entropy(cos, labels, target, scale, mask)


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
  return pairs.masked_mean(*arcface_per_row(
      embeddings, labels, W=W, margin=margin, scale=scale, mask=mask))


def subcenter_arcface_per_row(embeddings: jax.Array, labels: jax.Array, *,
                              W: jax.Array, margin: float = 28.6,
                              scale: float = 64.0, sub_centers: int = 3,
                              mask: jax.Array | None = None):
  """`subcenter_arcface_loss`'s (per-row losses, rows that count)."""
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  cos = similarity.cosine_similarity(x, W.T)
  cos = jnp.max(cos.reshape(cos.shape[0], -1, sub_centers), axis=2)
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
  return pairs.masked_mean(*subcenter_arcface_per_row(
      embeddings, labels, W=W, margin=margin, scale=scale,
      sub_centers=sub_centers, mask=mask))


def _multiple_angle_cos(c: jax.Array, m: int) -> jax.Array:
  """cos(m theta) from c = cos(theta): sum_n (-1)^n C(m, 2n) c^(m-2n)
  (1 - c^2)^n (L-Softmax's Eq. 7), on the unclamped cosine as PML."""
  terms = [(-1) ** n * math.comb(m, 2 * n) * c ** (m - 2 * n)
           * (1.0 - c * c) ** n for n in range(m // 2 + 1)]
  return sum(terms[1:], terms[0])


def _large_margin_target(c: jax.Array, m: int) -> jax.Array:
  """psi(theta) = (-1)^k cos(m theta) - 2k with theta in [k pi/m, (k+1) pi/m]
  (L-Softmax's Eq. 6); k is a constant, as PML computes it under no_grad."""
  theta = jnp.arccos(jnp.clip(jax.lax.stop_gradient(c), -1.0, 1.0))
  k = jnp.floor(theta / (math.pi / m))
  sign = jnp.where(jnp.mod(k, 2.0) == 0.0, 1.0, -1.0)
  return sign * _multiple_angle_cos(c, m) - 2.0 * k


def _angular_per_row(embeddings, labels, W, margin, scale, mask, w_norms):
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  m = int(margin)  # PML's int(margin)
  cos = similarity.cosine_similarity(x, W.T)
  target = _large_margin_target(_target_cos(cos, labels), m)
  # PML's get_norm: the plain 2-norm (its gradient at 0 is not needed:
  # padding rows are 1.0 here).
  x_norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=1))[:, None]
  if w_norms:
    x_norm = x_norm * jnp.sqrt(jnp.sum(jnp.square(W), axis=0))[None, :]
  return _target_cross_entropy(cos, labels, target, x_norm * scale, mask)


def large_margin_softmax_per_row(embeddings: jax.Array, labels: jax.Array, *,
                                 W: jax.Array, margin: int = 4,
                                 scale: float = 1.0,
                                 mask: jax.Array | None = None):
  """`large_margin_softmax_loss`'s (per-row losses, rows that count)."""
  return _angular_per_row(embeddings, labels, W, margin, scale, mask, True)


def large_margin_softmax_loss(embeddings: jax.Array, labels: jax.Array, *,
                              W: jax.Array, margin: int = 4,
                              scale: float = 1.0,
                              mask: jax.Array | None = None) -> jax.Array:
  """Large-Margin Softmax (Liu et al., ICML 2016), PML's form.

  The logit of class c is ||x|| ||W_c|| cos(theta_c) scale, the target
  class's cos(theta) replaced by psi(theta) = (-1)^k cos(m theta) - 2k,
  theta in [k pi / m, (k + 1) pi / m].

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    W: (D, num_classes).
    margin: the integer angle multiplier m (PML takes int(margin)).
    scale: multiplies the logits.
    mask: optional (N,) bool; False rows are padding.
  """
  return pairs.masked_mean(*large_margin_softmax_per_row(
      embeddings, labels, W=W, margin=margin, scale=scale, mask=mask))


def sphereface_per_row(embeddings: jax.Array, labels: jax.Array, *,
                       W: jax.Array, margin: int = 4, scale: float = 1.0,
                       mask: jax.Array | None = None):
  """`sphereface_loss`'s (per-row losses, rows that count)."""
  return _angular_per_row(embeddings, labels, W, margin, scale, mask, False)


def sphereface_loss(embeddings: jax.Array, labels: jax.Array, *,
                    W: jax.Array, margin: int = 4, scale: float = 1.0,
                    mask: jax.Array | None = None) -> jax.Array:
  """SphereFace / A-Softmax (Liu et al., CVPR 2017), PML's form: L-Softmax
  with the class vectors' norms left out, logits ||x|| cos scale.

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    W: (D, num_classes).
    margin: the integer angle multiplier m (PML takes int(margin)).
    scale: multiplies the logits.
    mask: optional (N,) bool; False rows are padding.
  """
  return pairs.masked_mean(*sphereface_per_row(
      embeddings, labels, W=W, margin=margin, scale=scale, mask=mask))
