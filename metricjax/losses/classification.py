"""Softmax cross-entropy for the classification head."""

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                          mask: jax.Array | None = None,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Mean cross-entropy over unmasked rows.

  Same numbers as torch.nn.functional.cross_entropy(logits, labels,
  label_smoothing=...): the target is (1 - s) one-hot + s / C everywhere.

  Args:
    logits: (N, C).
    labels: (N,) integer class ids.
    mask: optional (N,) bool; False rows are padding and not counted.
    label_smoothing: s in [0, 1]; may be traced.
  """
  if mask is not None:
    # Padded rows may hold anything (NaN logits, label -1): make them
    # harmless so they cannot leak NaN into the loss or the gradients.
    logits = jnp.where(mask[:, None], logits, 0.0)
    labels = jnp.where(mask, labels, 0)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  # Cross-entropy against the uniform target; linear in s, so no branch.
  uniform = -jnp.mean(jax.nn.log_softmax(logits), axis=-1)
  losses = (1.0 - label_smoothing) * nll + label_smoothing * uniform
  if mask is None:
    return jnp.mean(losses)
  return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
