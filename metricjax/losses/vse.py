"""Bidirectional hinge ranking loss of VSE (Kiros et al.) and VSE++.

Row i of image_emb and of text_emb is a matching pair; every other row of
the batch is a negative. With s = image_emb @ text_emb.T:
  caption negatives of image i:  [margin + s[i, j] - s[i, i]]_+
  image negatives of caption j:  [margin + s[i, j] - s[j, j]]_+
summed over all negatives (VSE, "SH") or only the hardest one per anchor
(VSE++, "MH", max_violation=True). Exactly VSE++'s ContrastiveLoss
(fartashf/vsepp model.py) for reduction="sum" and no mask. The embeddings
are used as given: the model normalises them.
"""

import jax
import jax.numpy as jnp


def vse_ranking_loss(image_emb: jax.Array, text_emb: jax.Array, *,
                     margin: float = 0.2, max_violation: bool = False,
                     reduction: str = "sum",
                     mask: jax.Array | None = None) -> jax.Array:
  """Scalar VSE / VSE++ loss of a batch of matching pairs.

  Args:
    image_emb: (N, D) image embeddings.
    text_emb: (N, D) caption embeddings; row i matches image row i.
    margin: hinge margin.
    max_violation: only the hardest negative per anchor (VSE++).
    reduction: "sum" over anchors (VSE++) or "mean" (divided by the number
      of pairs, so the scale does not grow with the batch size).
    mask: optional (N,) bool; False rows (padding) are neither anchors nor
      negatives.
  """
  if reduction not in ("sum", "mean"):
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
  scores = jnp.matmul(image_emb, text_emb.T,
                      precision=jax.lax.Precision.HIGHEST).astype(jnp.float32)
  diagonal = jnp.diagonal(scores)
  cost_s = jax.nn.relu(margin + scores - diagonal[:, None])
  cost_im = jax.nn.relu(margin + scores - diagonal[None, :])
  n = scores.shape[0]
  negative = ~jnp.eye(n, dtype=bool)
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    negative &= mask[:, None] & mask[None, :]
  cost_s = jnp.where(negative, cost_s, 0.0)
  cost_im = jnp.where(negative, cost_im, 0.0)
  if max_violation:
    total = jnp.sum(jnp.max(cost_s, axis=1)) + jnp.sum(jnp.max(cost_im, axis=0))
  else:
    total = jnp.sum(cost_s) + jnp.sum(cost_im)
  if reduction == "sum":
    return total
  pairs = n if mask is None else jnp.sum(mask)
  return total / jnp.maximum(pairs, 1)
