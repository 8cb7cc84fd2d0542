"""P2SGrad (Zhang et al., CVPR 2019), pytorch-metric-learning's form.

Same numbers as PML's `P2SGradLoss(descriptors_dim, num_classes)`: the mean
squared error between cos(x, weight[:, c]) (clamped to [-1, 1]) and the
one-hot label, over the N x num_classes entries. `weight` is PML's
`P2SGradLoss.weight`, (dim, num_classes); `init_p2sgrad_loss` draws it as
PML (uniform(-1, 1), columns renormalised to unit length).

Deliberate difference from PML: PML renormalises its parameter in place
(`weight.data = renorm(weight)`) at every call and differentiates the loss
w.r.t. the renormalised columns. A pure function cannot write its parameter
back, so here the columns are renormalised inside, as PML's renorm, and the
gradient passes straight through the renormalisation: values and gradients
equal PML's for any `weight`, but a weight that an optimiser has moved off
the unit sphere stays there in the train state (PML's would be back on it
before its next step). PML also asserts unit columns after renormalising
(columns of norm <= 1e-5 fail it); nothing is asserted here.

No miner (PML raises on an `indices_tuple`), no reference set, and its value
is already reduced (a reducer changes nothing in PML). `mask` drops padded
rows from the mean.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs


def init_p2sgrad_loss(rng: jax.Array, *, num_classes: int, embedding_dim: int,
                      **_) -> dict[str, jax.Array]:
  """uniform(-1, 1) of (dim, num_classes), unit columns, as PML."""
  w = jax.random.uniform(rng, (embedding_dim, num_classes), jnp.float32,
                         -1.0, 1.0)
  return {"weight": _renorm(w)}


def _renorm(w: jax.Array) -> jax.Array:
  """torch's renorm(2, 1, 1e-5).mul(1e5): columns rescaled to unit length
  (norm / (norm + 1e-7) exactly), those of norm <= 1e-5 only times 1e5."""
  norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=0, keepdims=True))
  factor = jnp.where(norm > 1e-5, 1e-5 / (norm + 1e-7), 1.0)
  return w * factor * 1e5


def p2sgrad_loss(embeddings: jax.Array, labels: jax.Array, *,
                 weight: jax.Array,
                 mask: jax.Array | None = None) -> jax.Array:
  """Mean over rows and classes of (cos(x, w_c) - [c = label])^2.

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).
    weight: (D, num_classes), renormalised inside (see the module docstring).
    mask: optional (N,) bool; False rows are padding.
  """
  x, labels = pairs.drop_padding(embeddings, labels, mask)
  # PML's weight.data = renorm(weight): its gradient w.r.t. the renormalised
  # columns, straight through.
  w = weight + jax.lax.stop_gradient(_renorm(weight) - weight)
  x_norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True))
  cos = jnp.clip((x @ w) / x_norm, -1.0, 1.0)
  onehot = labels[:, None] == jnp.arange(w.shape[1])[None, :]
  per_row = jnp.mean(jnp.square(cos - onehot), axis=1)
  return pairs.masked_mean(per_row, mask)
