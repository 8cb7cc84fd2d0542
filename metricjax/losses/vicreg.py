"""VICReg (Bardes, Ponce and LeCun, ICLR 2022): variance-invariance-
covariance regularisation of two views' embeddings.

Same numbers as pytorch-metric-learning's `VICRegLoss(invariance_lambda,
variance_mu, covariance_v, eps)(embeddings, ref_emb=ref_emb)`, row i of each
the embedding of one example's two views (no labels):

  invariance_lambda * mean_i mean_d (z_id - z'_id)^2
  + variance_mu * (mean_d relu(1 - std_d(Z)) + mean_d relu(1 - std_d(Z'))) / 2
  + covariance_v * (sum_{d != e} C(Z)_de^2 + sum_{d != e} C(Z')_de^2) / D,

std_d = sqrt(var_d + eps), var and the covariance C unbiased (N - 1), PML's
sub-losses each reduced by its MeanReducer and summed.

PML's VICRegLoss refuses labels, an indices_tuple, a distance and an
embedding regularizer; so does this (no miner, distance or reducer through
`build`; PML's other reducers are not offered either). `mask` drops padded
rows (pairs) from every statistic.
"""

import jax
import jax.numpy as jnp

from metricjax.losses import pairs


def _centred(z: jax.Array, valid: jax.Array, count: jax.Array) -> jax.Array:
  mean = jnp.sum(z, axis=0) / count
  return jnp.where(valid[:, None], z - mean, 0.0)


def vicreg_loss(embeddings: jax.Array, ref_emb: jax.Array, *,
                invariance_lambda: float = 25.0, variance_mu: float = 25.0,
                covariance_v: float = 1.0, eps: float = 1e-4,
                mask: jax.Array | None = None) -> jax.Array:
  """VICReg loss of two views' embeddings.

  Args:
    embeddings, ref_emb: (N, D), row i of each a view of example i.
    invariance_lambda, variance_mu, covariance_v: the three terms' weights.
    eps: added to the variances under the square root.
    mask: optional (N,) bool; False rows (of both) are padding.

  Returns:
    A float scalar.
  """
  n, dim = embeddings.shape
  valid = jnp.ones((n,), bool) if mask is None else mask
  z = jnp.where(valid[:, None], embeddings, 0.0)
  r = jnp.where(valid[:, None], ref_emb, 0.0)
  count = jnp.sum(valid).astype(z.dtype)
  invariance = pairs.masked_mean(jnp.mean(jnp.square(z - r), axis=1), mask)
  off_diagonal = ~jnp.eye(dim, dtype=bool)

  def variance_and_covariance(v):
    c = _centred(v, valid, count)
    cov = c.T @ c / (count - 1.0)
    std = jnp.sqrt(jnp.diagonal(cov) + eps)
    variance = jnp.mean(jax.nn.relu(1.0 - std) / 2.0)
    covariance = jnp.sum(jnp.where(off_diagonal, jnp.square(cov), 0.0)) / dim
    return variance, covariance

  var_z, cov_z = variance_and_covariance(z)
  var_r, cov_r = variance_and_covariance(r)
  return (invariance_lambda * invariance + variance_mu * (var_z + var_r)
          + covariance_v * (cov_z + cov_r))
