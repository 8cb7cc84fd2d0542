"""Manifold loss (Aziere and Todorovic, "Ensemble Deep Manifold Similarity
Learning using Hard Proxies", CVPR 2019).

Same numbers as pytorch-metric-learning's `ManifoldLoss(l, K, lambdaC,
alpha, margin)` with its CosineSimilarity, given the same meta classes. The
batch's N embeddings and the K learnable proxies are the nodes of a graph
with affinities S = exp(2 max(cos, 0)) off the diagonal; a random walk with
restart spreads them, F = (1 - alpha) (I - alpha D^-1/2 S D^-1/2)^-1 (D the
degrees). Each row i belongs to meta class m_i (a proxy), and with hinges
h(v) = log(1 + sum_{k != m_i, v_k >= 0} exp(v_k)) (PML drops the entries
below 0, and k = m_i):

  loss_int = mean_i h(F[i, N + k] - F[i, N + m_i] + margin)
  loss_ctx = mean_i h(c_ik - c_im_i + margin), c_ik = cos(F[i], F[N + k]),
  loss = loss_int + lambdaC loss_ctx.

The rows take no labels (PML refuses them). Their meta classes are PML's
indices_tuple: pass `meta_classes` (N,) in [0, K), or a PRNG `key` to draw
them as PML does (every proxy once, the other N - K rows uniformly, in a
random order; needs N >= K). The draws are jax's, not torch's: the same key
gives the same classes, but not PML's for a torch seed.

`proxies` is PML's `ManifoldLoss.proxies`, (K, l), drawn N(0, 1) by
`init_manifold_loss` (PML's l, the embedding size, is its embedding_dim).
No miner, distance or reducer through `build`: PML's indices_tuple here is
the meta classes, not a miner's output; its distance is CosineSimilarity
(PML takes another; this does not) and its loss already reduced. `mask`
drops padded rows from the graph and the means.

Deliberate differences from PML:
- lambdaC=inf: PML returns inf (or NaN); here the loss is loss_ctx alone,
  the "context loss only" PML's docstring describes;
- with a mask, drawn meta classes cover all N rows, padding included, so a
  proxy may have no valid row (PML draws over the valid rows only).
"""

import math

import jax
import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.ops import similarity


def init_manifold_loss(rng: jax.Array, *, num_classes: int | None = None,
                       embedding_dim: int, K: int | None = 50,
                       **_) -> dict[str, jax.Array]:
  """PML's torch.randn(K, l) proxies (num_classes is not used: the proxies
  are meta classes, not classes)."""
  del num_classes
  return {"proxies": jax.random.normal(rng, (50 if K is None else K,
                                             embedding_dim), jnp.float32)}


def draw_meta_classes(key: jax.Array, n: int, num_proxies: int) -> jax.Array:
  """(n,) int32 meta classes as PML draws them: 0..K-1 once each, the other
  n - K rows uniform in [0, K), then a random permutation."""
  if n < num_proxies:
    raise UserError(
        f"manifold draws meta classes for {n} rows but has {num_proxies} "
        "proxies: each proxy needs a row (PML fails there too). Use a batch "
        f"of at least K={num_proxies} rows, a smaller K, or pass "
        "meta_classes.")
  k_extra, k_perm = jax.random.split(key)
  extra = jax.random.randint(k_extra, (n - num_proxies,), 0, num_proxies)
  classes = jnp.concatenate([jnp.arange(num_proxies), extra]).astype(jnp.int32)
  return classes[jax.random.permutation(k_perm, n)]


def _hinge(v: jax.Array, own: jax.Array) -> jax.Array:
  """Row-wise log(1 + sum exp(v)) over the entries >= 0 other than own."""
  keep = ~own & (v >= 0)
  # Dropped entries are replaced before exp: no overflow, no NaN gradient.
  return jnp.log(1.0 + jnp.sum(jnp.where(keep, jnp.exp(jnp.where(keep, v, 0.0)),
                                         0.0), axis=1))


def manifold_loss(embeddings: jax.Array, meta_classes: jax.Array | None = None,
                  *, proxies: jax.Array, key: jax.Array | None = None,
                  K: int | None = None, lambdaC: float = 1.0,
                  alpha: float = 0.8, margin: float = 5e-4,
                  mask: jax.Array | None = None) -> jax.Array:
  """Manifold loss of a batch of unlabelled rows.

  Args:
    embeddings: (N, D).
    meta_classes: (N,) ints in [0, K), each row's proxy; None: drawn with key.
    proxies: (K, D), the learnable proxies.
    key: a jax PRNG key, needed when meta_classes is None.
    K: the number of proxies (None: proxies' rows; else it must match).
    lambdaC: the context loss's weight (>= 0; inf: the context loss only).
    alpha: the random walk's spreading factor, in (0, 1).
    margin: the hinges' margin.
    mask: optional (N,) bool; False rows are padding.

  Returns:
    A float scalar.
  """
  n = embeddings.shape[0]
  num_proxies = proxies.shape[0]
  if K is not None and K != num_proxies:
    raise UserError(f"manifold has K={K} but proxies of {num_proxies} rows; "
                    "initialise them with the same K (init_manifold_loss).")
  if lambdaC < 0:
    raise UserError(f"manifold's lambdaC={lambdaC}: it must be >= 0 (PML "
                    "raises too).")
  if meta_classes is None:
    if key is None:
      raise UserError("manifold draws its meta classes at random: pass key= "
                      "(a jax PRNG key) or meta_classes=.")
    meta_classes = draw_meta_classes(key, n, num_proxies)
  valid = jnp.ones((n,), bool) if mask is None else mask
  x = embeddings if mask is None else jnp.where(mask[:, None], embeddings, 1.0)
  nodes = jnp.concatenate([x, proxies.astype(x.dtype)])
  node_valid = jnp.concatenate([valid, jnp.ones((num_proxies,), bool)])
  size = n + num_proxies
  edge = (node_valid[:, None] & node_valid[None, :]
          & ~jnp.eye(size, dtype=bool))
  s = jnp.where(edge, jnp.exp(jnp.maximum(similarity.cosine_similarity(nodes),
                                          0.0) / 0.5), 0.0)
  # Padded nodes are isolated: degree 1 keeps D^-1/2 finite, and their block
  # of the inverse is the identity, coupled to nothing.
  degree = jnp.where(node_valid, jnp.sum(s, axis=1), 1.0)
  d_inv_half = degree ** -0.5
  s_bar = d_inv_half[:, None] * s * d_inv_half[None, :]
  f = (1.0 - alpha) * jnp.linalg.inv(jnp.eye(size, dtype=s.dtype)
                                     - alpha * s_bar)
  f_e, f_p = f[:n], f[n:]
  own = meta_classes[:, None] == jnp.arange(num_proxies)[None, :]

  def hinge_mean(scores):
    own_score = jnp.sum(jnp.where(own, scores, 0.0), axis=1, keepdims=True)
    losses = _hinge(scores - own_score + margin, own)
    return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(
        jnp.sum(valid), 1).astype(losses.dtype)

  context = similarity.cosine_similarity(f_e, f_p)
  loss_ctx = hinge_mean(context)
  if math.isinf(lambdaC):
    return loss_ctx
  return hinge_mean(f_e[:, n:]) + lambdaC * loss_ctx
