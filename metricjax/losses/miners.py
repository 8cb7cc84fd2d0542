"""Miners: which pairs or triplets of a batch a loss sees, as pytorch-metric-
learning's miners choose them, in fixed shapes.

PML's miners return variable-length index tuples; under jit every shape is
fixed, so a miner here returns masks over the (N, M) anchor-reference pairs:
- `Pairs(pos, neg)`: the mined positive and negative pairs, PML's
  (a1, p, a2, n);
- `Triplets(pos, neg, window)`: PML's (a, p, n), as every (a, p, n) with
  pos[a, p] and neg[a, n] and, when `window` is set, window(a)[p, n]: an
  (M, M) tile computed per anchor from O(N M) data. A triplet loss walks the
  anchors a few at a time, never forming the (N, M, M) tensor.

A miner is `fn(mat, pos, neg, distance, **kwargs)` on its own distance's
(N, M) matrix (no gradient: PML mines under no_grad) and the batch's label
masks (padding already out). Random miners also take `key=` (a jax PRNG
key) and may list a tuple several times: their masks are then int counts.
To add one: the function and one REGISTRY line.
"""

import fractions
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from metricjax.losses import distances as distances_lib
from metricjax.losses.distances import Distance

INF = float("inf")


class Pairs(NamedTuple):
  # (N, M) bool, or int counts where a random miner lists a pair repeatedly
  pos: jax.Array
  neg: jax.Array
  # (N, M) int: the positive pairs' order in PML's list (smaller first), for
  # the losses that keep the first pair of a kind (npairs); None: row-major.
  pos_order: jax.Array | None = None


class Triplets(NamedTuple):
  pos: jax.Array  # (N, M) bool: candidate positives per anchor (or counts)
  neg: jax.Array  # (N, M) bool: candidate negatives per anchor (or counts)
  # anchor index -> (M, M) [p, n]: which of its (p, n) are mined (bool), or
  # how often (int); None: all of them, the pos x neg product.
  window: Callable[[jax.Array], jax.Array] | None = None


def tile(t: Triplets, a, p_row, n_row) -> jax.Array:
  """(M, M) float [p, n]: how often anchor a's (a, p, n) is mined."""
  w = (p_row[:, None].astype(jnp.float32) * n_row[None, :].astype(jnp.float32))
  return w if t.window is None else w * t.window(a).astype(jnp.float32)


def anchor_batch(m: int) -> int:
  """Anchors per step of a walk over (M, M) tiles: at most 2^24 entries."""
  return max(1, min(m, (1 << 24) // max(m * m, 1)))


def walk_anchors(fn, xs, num_refs: int):
  """lax.map over anchors, a few at a time, so (N, M, M) never exists."""
  return jax.lax.map(fn, xs, batch_size=anchor_batch(num_refs))


def pair_counts(mined: Pairs | Triplets) -> tuple[jax.Array, jax.Array]:
  """How often each pair occurs in the mined tuples, as PML's
  convert_to_pairs lists them: a triplet (a, p, n) lists (a, p) and (a, n)."""
  if isinstance(mined, Pairs):
    return mined.pos.astype(jnp.float32), mined.neg.astype(jnp.float32)
  pos = mined.pos.astype(jnp.float32)
  neg = mined.neg.astype(jnp.float32)
  if mined.window is None:
    return (pos * jnp.sum(neg, axis=1, keepdims=True),
            neg * jnp.sum(pos, axis=1, keepdims=True))

  def one_anchor(args):
    a, p, n = args
    counts = tile(mined, a, p, n)
    return jnp.sum(counts, axis=1), jnp.sum(counts, axis=0)
  return walk_anchors(one_anchor, (jnp.arange(pos.shape[0]), pos, neg),
                      pos.shape[1])


def element_weights(mined: Pairs | Triplets, *,
                    anchors_only: bool = False) -> jax.Array:
  """(N,) PML's convert_to_weights: how often each row occurs anywhere in
  the mined tuples (as anchor, positive or negative; with anchors_only, as
  an anchor, PML's using_ref), over the largest such count; all ones when
  nothing was mined, as PML's."""
  pos, neg = pair_counts(mined)
  # A pair (a, b) lists a and b; a triplet (a, p, n) lists a once, so its
  # anchors are counted from the positive side only.
  counts = jnp.sum(pos, axis=1)
  if isinstance(mined, Pairs):
    counts = counts + jnp.sum(neg, axis=1)
  if not anchors_only:
    counts = counts + jnp.sum(pos, axis=0) + jnp.sum(neg, axis=0)
  top = jnp.max(counts)
  any_mined = jnp.any(pos > 0) | jnp.any(neg > 0)
  return jnp.where(any_mined, counts / jnp.maximum(top, 1.0), 1.0)


def as_triplets(mined: Pairs | Triplets) -> Triplets:
  """PML's convert_to_triplets: pairs sharing an anchor make its triplets."""
  return mined if isinstance(mined, Triplets) else Triplets(mined.pos,
                                                            mined.neg)


def multi_similarity(mat, pos, neg, distance: Distance, *,
                     epsilon: float = 0.1) -> Pairs:
  """MultiSimilarityMiner: positives less close than the anchor's closest
  negative (+ epsilon), negatives closer than its farthest positive.

  PML lists an anchor's positives in ascending order of mat (it sorts the
  row): pos_order says so.
  """
  rank_in_row = jnp.argsort(jnp.argsort(mat, axis=1), axis=1)
  order = jnp.arange(mat.shape[0])[:, None] * mat.shape[1] + rank_in_row
  if distance.is_inverted:
    hardest_neg = jnp.max(jnp.where(neg, mat, -INF), axis=1, keepdims=True)
    easiest_pos = jnp.min(jnp.where(pos, mat, INF), axis=1, keepdims=True)
    # Written as PML writes them, so float32 rounding at the edge agrees.
    return Pairs(pos & (mat - epsilon < hardest_neg),
                 neg & (mat + epsilon > easiest_pos), order)
  hardest_neg = jnp.min(jnp.where(neg, mat, INF), axis=1, keepdims=True)
  easiest_pos = jnp.max(jnp.where(pos, mat, -INF), axis=1, keepdims=True)
  return Pairs(pos & (mat + epsilon > hardest_neg),
               neg & (mat - epsilon < easiest_pos), order)


def pair_margin(mat, pos, neg, distance: Distance, *, pos_margin: float = 0.2,
                neg_margin: float = 0.8) -> Pairs:
  """PairMarginMiner: positives beyond pos_margin, negatives within
  neg_margin."""
  if distance.is_inverted:
    return Pairs(pos & (mat < pos_margin), neg & (mat > neg_margin))
  return Pairs(pos & (mat > pos_margin), neg & (mat < neg_margin))


def triplet_margin(mat, pos, neg, distance: Distance, *, margin: float = 0.2,
                   type_of_triplets: str = "all") -> Triplets:
  """TripletMarginMiner: triplets by their gap d(a,n) - d(a,p) vs margin."""
  windows = {"all": (-INF, margin), "hard": (-INF, min(margin, 0.0)),
             "semihard": (0.0, margin), "easy": (margin, INF)}
  if type_of_triplets not in windows:
    raise ValueError(f"type_of_triplets {type_of_triplets!r}")
  low, high = windows[type_of_triplets]

  def window(a):
    row = mat[a]
    # How much farther n is than p, written as PML writes it.
    g = (row[:, None] - row[None, :] if distance.is_inverted
         else row[None, :] - row[:, None])
    keep = jnp.ones(g.shape, bool)
    if low > -INF:
      keep &= g > low
    if high < INF:
      keep &= g <= high
    return keep
  return Triplets(pos, neg, window)


def angular(mat, pos, neg, distance: Distance, *, angle: float = 20,
            x=None) -> Triplets:
  """AngularMiner: triplets whose angle atan(d(a,p) / (2 d(n, (a+p)/2)))
  exceeds `angle` degrees (Wang et al. 2017), on the rows x.

  As PML's: on the rows as given (its pairwise_distance does not normalise,
  whatever its asserted LpDistance says), as |u - v + 1e-6| (torch's
  pairwise_distance). Both distances expand over the Gram matrix: O(N M).
  """
  del mat, distance  # PML asserts the default LpDistance, then skips it
  eps = 1e-6
  dim = x.shape[1]
  gram = x @ x.T
  sq = jnp.diagonal(gram)
  sums = jnp.sum(x, axis=1)
  threshold = math.radians(angle)

  def window(a):
    ap2 = (sq[a] + sq - 2.0 * gram[a] + 2.0 * eps * (sums[a] - sums)
           + dim * eps * eps)
    # |n - c|^2 with c = (a + p) / 2, [p, n].
    cc = (sq[a] + 2.0 * gram[a] + sq) / 4.0
    nc2 = (sq[None, :] - gram[a][None, :] - gram + cc[:, None]
           + 2.0 * eps * (sums[None, :] - (sums[a] + sums[:, None]) / 2.0)
           + dim * eps * eps)
    ap = jnp.sqrt(jnp.maximum(ap2, 0.0))[:, None]
    nc = jnp.sqrt(jnp.maximum(nc2, 0.0))
    return jnp.arctan(ap / (2.0 * nc)) > threshold
  return Triplets(pos, neg, window)


def _ceil_times(f: float, count: jax.Array) -> jax.Array:
  """ceil(f x count) as PML's float64 math.ceil gives it, in int32.

  float32 would give ceil(0.2 x 250) = 51; a fraction num / den (den <=
  1000) is exact in integers, count split as q den + r so nothing
  overflows. Other f: float32, which can differ by one at exact integers.
  """
  frac = fractions.Fraction(f).limit_denominator(1000)
  if float(frac) != f:
    return jnp.ceil(f * count).astype(jnp.int32)
  num, den = frac.numerator, frac.denominator
  q, r = count // den, count % den
  return q * num + (r * num + den - 1) // den


def hdc(mat, pos, neg, distance: Distance, *,
        filter_percentage: float = 0.5) -> Pairs:
  """HDCMiner: the hardest ceil(filter_percentage x count) of the batch's
  positive pairs and of its negative pairs.

  The k-th hardest value is a threshold, so pairs tied with it are all
  kept; PML's torch.topk keeps an arbitrary k of them (a self-compared
  batch's (a, b) and (b, a) tie, so one more pair can be kept here).
  """

  def hardest(keep, largest):
    score = mat if largest else -mat
    values = jnp.where(keep, score, -INF).ravel()
    k = _ceil_times(filter_percentage, jnp.sum(keep))
    kth = jnp.sort(values)[::-1][jnp.maximum(k - 1, 0)]
    return keep & (score >= kth) & (k > 0)
  # Farthest positives, closest negatives (flipped for a similarity).
  return Pairs(hardest(pos, not distance.is_inverted),
               hardest(neg, distance.is_inverted))


_STRATEGIES = ("hard", "semihard", "easy", "all")


def _histogram_sample(mat, keep, num_bins, per_bin, key):
  """UniformHistogramMiner's draw on one side: the kept pairs' values cut
  into num_bins equal bins, per_bin pairs drawn with replacement from each
  non-empty bin. Returns (N, M) int counts."""
  values, kept = mat.ravel(), keep.ravel()
  lo = jnp.min(jnp.where(kept, values, INF))
  hi = jnp.max(jnp.where(kept, values, -INF))
  edges = jnp.linspace(lo, hi, num_bins + 1)
  # [s, e) per bin, the last one [s, e], as PML's loop.
  bins = jnp.clip(jnp.searchsorted(edges, values, side="right") - 1, 0,
                  num_bins - 1)
  bins = jnp.where(kept, bins, num_bins)  # the dropped: a bin of their own
  order = jnp.argsort(bins, stable=True)
  sizes = jnp.bincount(bins, length=num_bins + 1)[:num_bins]
  starts = jnp.cumsum(sizes) - sizes
  u = jax.random.uniform(key, (num_bins, per_bin))
  j = jnp.minimum((u * sizes[:, None]).astype(jnp.int32),
                  jnp.maximum(sizes[:, None] - 1, 0))
  picks = order[starts[:, None] + j]
  counts = jnp.zeros(values.shape, jnp.int32).at[picks.ravel()].add(
      jnp.broadcast_to(sizes[:, None] > 0, picks.shape).ravel())
  return counts.reshape(mat.shape)


def uniform_histogram(mat, pos, neg, distance: Distance, *,
                      num_bins: int = 100, pos_per_bin: int = 10,
                      neg_per_bin: int = 10, key) -> Pairs:
  """UniformHistogramMiner: pairs drawn evenly across the range of their
  distances, per_bin from each of num_bins bins (random: needs key)."""
  del distance
  key_pos, key_neg = jax.random.split(key)
  return Pairs(_histogram_sample(mat, pos, num_bins, pos_per_bin, key_pos),
               _histogram_sample(mat, neg, num_bins, neg_per_bin, key_neg))


def _draw_per_row(key, logits, num: int) -> jax.Array:
  """(N, num) indices, row i's drawn with probabilities softmax(logits[i])
  by inverting the row's CDF: O(N M) memory, where categorical with
  shape=(N, num) would draw an (N, num, M) Gumbel tensor. A row with no
  finite logit gives index M - 1 (its anchor is not valid anyway)."""
  finite = jnp.isfinite(logits)
  shift = jnp.max(jnp.where(finite, logits, -INF), axis=1, keepdims=True)
  p = jnp.where(finite, jnp.exp(logits - jnp.where(finite.any(
      axis=1, keepdims=True), shift, 0.0)), 0.0)
  cdf = jnp.cumsum(p, axis=1)
  u = jax.random.uniform(key, (logits.shape[0], num)) * cdf[:, -1:]
  # side="right": the first entry whose CDF exceeds u; one of zero
  # probability never does.
  idx = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"))(cdf, u)
  return jnp.minimum(idx, logits.shape[1] - 1)


def distance_weighted(mat, pos, neg, distance: Distance, *,
                      cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                      key, x=None) -> Triplets:
  """DistanceWeightedMiner (Wu et al. 2017): per anchor as many triplets as
  its class has members, each a uniform positive and a negative drawn with
  probability ~ 1 / q(d), q the density of distances between points on the
  unit sphere in dim D, d clamped to cutoff, none at nonzero_loss_cutoff or
  beyond (random: needs key). The draws are (N, M) index arrays (inverse
  CDF: no (N, M, M) array); an anchor's (M, M) tile counts them."""
  del distance
  dim = float(x.shape[1])
  d = jnp.maximum(mat, cutoff)
  log_w = (2.0 - dim) * jnp.log(d) - ((dim - 3.0) / 2.0) * jnp.log(
      1.0 - 0.25 * d * d)
  ok = neg & (mat < nonzero_loss_cutoff) & jnp.isfinite(log_w)
  # Row-wise max shift (PML shifts by a global max: the same probabilities).
  shift = jnp.max(jnp.where(ok, log_w, -INF), axis=1, keepdims=True)
  logits = jnp.where(ok, log_w - jnp.where(jnp.isfinite(shift), shift, 0.0),
                     -INF)
  num_refs = mat.shape[1]
  draws = jnp.arange(num_refs)[None, :] <= jnp.sum(pos, axis=1,
                                                   keepdims=True)
  valid = jnp.any(pos, axis=1) & jnp.any(ok, axis=1)
  key_p, key_n = jax.random.split(key)
  p_idx = _draw_per_row(key_p, jnp.where(pos, 0.0, -INF), num_refs)
  n_idx = _draw_per_row(key_n, logits, num_refs)

  def window(a):
    return jnp.zeros((num_refs, num_refs), jnp.int32).at[
        p_idx[a], n_idx[a]].add(draws[a].astype(jnp.int32))
  return Triplets(pos & valid[:, None], neg & valid[:, None], window)


def _pick(mat, keep, take_max, threshold=None, val_range=None):
  """Per row the max (or min) of mat over keep: (one-hot (N, M), value,
  any), as BatchEasyHardMiner's get_x_per_row. threshold: semi-hard, only
  entries strictly beyond it (below it for max)."""
  if threshold is not None:
    keep &= (mat < threshold) if take_max else (mat > threshold)
  if val_range is not None:
    keep &= (mat <= val_range[1]) & (mat >= val_range[0])
  masked = jnp.where(keep, mat, -INF if take_max else INF)
  idx = jnp.argmax(masked, axis=1) if take_max else jnp.argmin(masked, axis=1)
  found = jnp.any(keep, axis=1)
  value = jnp.take_along_axis(masked, idx[:, None], axis=1)
  one_hot = (jnp.arange(mat.shape[1])[None, :] == idx[:, None]) & found[:, None]
  return one_hot, value, found


def batch_easy_hard(mat, pos, neg, distance: Distance, *,
                    pos_strategy: str = "easy", neg_strategy: str = "semihard",
                    allowed_pos_range=None, allowed_neg_range=None) -> Pairs:
  """BatchEasyHardMiner: per anchor one positive and one negative (or all of
  a side with "all"); "semihard" picks relative to the other side's pick."""
  if pos_strategy not in _STRATEGIES or neg_strategy not in _STRATEGIES:
    raise ValueError(f"strategies must be one of {', '.join(_STRATEGIES)}")
  if pos_strategy == neg_strategy == "semihard" or (
      "all" in (pos_strategy, neg_strategy)
      and "semihard" in (pos_strategy, neg_strategy)):
    raise ValueError("semihard cannot be combined with semihard or all")
  inv = distance.is_inverted
  # Farthest positive for hard/semihard, closest for easy (PML's max/min
  # per row, flipped for a similarity); the negative side the other way.
  pos_max = (pos_strategy in ("hard", "semihard")) != inv
  neg_max = (neg_strategy == "easy") != inv

  def pick_pos(threshold=None):
    return _pick(mat, pos, pos_max, threshold, allowed_pos_range)

  def pick_neg(threshold=None):
    return _pick(mat, neg, neg_max, threshold, allowed_neg_range)
  if pos_strategy == "semihard" and neg_strategy != "all":
    n_hot, n_val, n_found = pick_neg()
    p_hot, _, p_found = pick_pos(n_val)
  elif neg_strategy == "semihard" and pos_strategy != "all":
    p_hot, p_val, p_found = pick_pos()
    n_hot, _, n_found = pick_neg(p_val)
  else:
    if pos_strategy != "all":
      p_hot, _, p_found = pick_pos()
    if neg_strategy != "all":
      n_hot, _, n_found = pick_neg()
  if "all" not in (pos_strategy, neg_strategy):
    both = (p_found & n_found)[:, None]
    return Pairs(p_hot & both, n_hot & both)
  return Pairs(pos if pos_strategy == "all" else p_hot,
               neg if neg_strategy == "all" else n_hot)


def batch_hard(mat, pos, neg, distance: Distance) -> Triplets:
  """BatchHardMiner: per anchor its farthest positive and closest negative,
  anchors lacking either dropped; one triplet per kept anchor."""
  p = batch_easy_hard(mat, pos, neg, distance, pos_strategy="hard",
                      neg_strategy="hard")
  return Triplets(p.pos, p.neg)


class Miner(NamedTuple):
  fn: Callable[..., Pairs | Triplets]
  default_distance: Callable[[], Distance]
  # PML asserts the default distance (AngularMiner), and the miner takes
  # the rows themselves as x=.
  fixed_distance: bool = False
  random: bool = False  # takes key=


REGISTRY: dict[str, Miner] = {
    "multi_similarity": Miner(multi_similarity, distances_lib.cosine),
    "pair_margin": Miner(pair_margin, distances_lib.lp),
    "triplet_margin": Miner(triplet_margin, distances_lib.lp),
    "batch_hard": Miner(batch_hard, distances_lib.lp),
    "batch_easy_hard": Miner(batch_easy_hard, distances_lib.lp),
    "angular": Miner(angular, distances_lib.lp, fixed_distance=True),
    "hdc": Miner(hdc, distances_lib.lp),
    "uniform_histogram": Miner(uniform_histogram, distances_lib.lp,
                               random=True),
    "distance_weighted": Miner(distance_weighted, distances_lib.lp,
                               fixed_distance=True, random=True),
}
