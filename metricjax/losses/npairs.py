"""N-pair loss (Sohn 2016), as pytorch-metric-learning's NPairsLoss: one
positive pair (a_k, p_k) per class, then cross-entropy of each anchor's
similarities to all the chosen positives, its own the target:

  -log softmax_l(s(a_k, p_l))[k],  s = the distance (negated when it is not
  a similarity; default DotProductSimilarity on normalised rows).

Which pair stands for a class is PML's convert_to_pos_pairs_with_unique_
labels: the first positive pair, in the miner's list order, whose anchor has
that label (without a miner, and for the triplet miners, the smallest
anchor index and then its smallest positive index; MultiSimilarityMiner
lists a row's positives by ascending distance, miners.Pairs.pos_order).
Built with `losses.build("npairs", ...)` (compose.py): any distance,
reductions per element (the chosen anchors).

Deliberate differences from PML: HDCMiner and UniformHistogramMiner list
their pairs by value or at random; here their pairs are taken row-major.
"""

import jax.numpy as jnp

from metricjax.losses import pairs


def npairs_core(b):
  """{"loss": ((N,) per chosen anchor, 1 where chosen)} of the
  cores.Batch b."""
  pos_w, _ = b.pair_weights()
  mined = pos_w > 0
  big = jnp.iinfo(jnp.int32).max
  rank = jnp.where(mined, b.pos_rank(), big)
  first = jnp.min(rank, axis=1)  # each anchor's first listed positive
  positive = jnp.argmin(rank, axis=1)
  has = jnp.any(mined, axis=1)
  same = b.labels[:, None] == b.labels[None, :]
  # An anchor stands for its class if its first pair precedes the others'.
  earlier = same & has[None, :] & (first[None, :] < first[:, None])
  chosen = has & ~jnp.any(earlier, axis=1)
  sim = b.mat if b.distance.is_inverted else -b.mat
  logits = jnp.take(sim, positive, axis=1)  # [k, l] = s(a_k, p_l)
  target = jnp.diagonal(logits)
  lse = pairs.masked_logsumexp(logits, jnp.broadcast_to(chosen[None, :],
                                                        logits.shape))
  losses = jnp.where(chosen, lse - target, 0.0)
  return {"loss": (losses, chosen.astype(b.x.dtype))}
