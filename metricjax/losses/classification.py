"""Softmax cross-entropy for the classification head."""

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                          mask: jax.Array | None = None,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Mean cross-entropy over unmasked rows.

  Same numbers as torch.nn.functional.cross_entropy(logits, labels,
  label_smoothing=...): the smoothed target puts label_smoothing / C on
  every class.

  Args:
    logits: (N, C).
    labels: (N,) integer class ids.
    mask: optional (N,) bool; False rows are padding and not counted.
    label_smoothing: in [0, 1].
  """
  if mask is not None:
    # Padded rows may hold any logits and labels (-1, out of range): make
    # them harmless so they cannot leak NaN into the gradients.
    logits = jnp.where(mask[:, None], logits, 0.0)
    labels = jnp.where(mask, labels, 0)
  if label_smoothing:
    targets = optax.smooth_labels(
        jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
        label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets)
  else:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if mask is None:
    return jnp.mean(losses)
  return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
