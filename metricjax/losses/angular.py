"""Angular loss (Wang et al. 2017, arXiv:1708.01682), as pytorch-metric-
learning's AngularLoss: per positive pair (a, p),

  log(1 + sum_n exp(4 tan^2(alpha) (a + p) . n - 2 (1 + tan^2(alpha)) a . p))

over every n of another class than a, with a and p normalised and n the
embedding as given (PML normalises the anchors and positives only).

The pairs are the miner's positive pairs (PML's convert_to_pairs: a
triplet lists its (a, p) once per negative); the negatives are the batch's,
by label, whatever the miner chose, as PML's keep_mask. A batch whose miner
found no negative pair at all is 0, as PML's. Built with
`losses.build("angular", ...)` (compose.py): LpDistance(p=2, power=1,
normalised) only, as PML asserts; reductions per positive pair.

The (a, p, n) terms are summed anchor by anchor, (M, M) at a time: O(N M)
memory, never (N, M, M).
"""

import math

import jax
import jax.numpy as jnp

from metricjax.losses import miners as miners_lib
from metricjax.losses import pairs
from metricjax.ops import similarity


def angular_core(b, *, alpha: float = 40.0):
  """{"loss": ((N, M) per positive pair, their multiplicities)} of the
  cores.Batch b; alpha in degrees."""
  pos_w, neg_w = b.pair_weights()
  sq_tan = math.tan(math.radians(alpha)) ** 2
  xn = similarity.l2_normalize(b.x)
  ap = xn @ xn.T  # a . p, normalised rows
  proj = 4.0 * sq_tan * (xn @ b.x.T)  # 4 tan^2 x_a . n, n as given

  def one_anchor(args):
    proj_a, neg_a = args
    # [p, n]: 4 tan^2 (a + p) . n; the (a, p) term is added after the lse.
    return pairs.masked_logsumexp(proj_a[None, :] + proj, neg_a[None, :])
  lse = miners_lib.walk_anchors(jax.checkpoint(one_anchor), (proj, b.neg),
                                proj.shape[1])
  has_neg = jnp.any(b.neg, axis=1, keepdims=True)
  logits = lse - 2.0 * (1.0 + sq_tan) * ap
  # log(1 + sum exp): 0 for an anchor without negatives (PML's add_one).
  losses = jnp.where(has_neg, jax.nn.softplus(jnp.where(has_neg, logits,
                                                        0.0)), 0.0)
  return {"loss": (losses, jnp.where(jnp.any(neg_w > 0), pos_w, 0.0))}
