"""Distances and miners against pytorch-metric-learning: the distance
matrices and their gradients, and each deterministic miner's output exactly
(PML's index tuples turned into our masks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax.losses import compose
from metricjax.losses import miners
from metricjax.ops import similarity
from loss_harness import import_pml
from loss_harness import random_batch

# Op by op: tests/losses/conftest.py says why.
pytestmark = pytest.mark.eager

N, DIM = 32, 8

DISTANCES = [
    ("lp", {}, "LpDistance", {}),
    ("lp", {"p": 1}, "LpDistance", {"p": 1}),
    ("lp", {"power": 2}, "LpDistance", {"power": 2}),
    ("lp", {"normalize_embeddings": False}, "LpDistance",
     {"normalize_embeddings": False}),
    ("cosine", {}, "CosineSimilarity", {}),
    ("dot_product", {"normalize_embeddings": False}, "DotProductSimilarity",
     {"normalize_embeddings": False}),
    ("snr", {}, "SNRDistance", {}),
]


@pytest.mark.parametrize("name,kwargs,pml_name,pml_kwargs", DISTANCES)
def test_distance_matches_pml(name, kwargs, pml_name, pml_kwargs):
  torch, distances, _, _ = import_pml()
  x, _ = random_batch(0, n=N, dim=DIM)
  w = np.random.default_rng(1).normal(size=(N, N))
  dist = compose.make_distance({"name": name, **kwargs})
  mat = np.asarray(dist.fn(jnp.asarray(x), jnp.asarray(x)))
  grad = np.asarray(jax.grad(lambda e: jnp.sum(dist.fn(e, e) * w))(
      jnp.asarray(x)))
  pml = getattr(distances, pml_name)(**pml_kwargs)
  t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
  theirs = pml(t)
  torch.sum(theirs * torch.tensor(w)).backward()
  assert dist.is_inverted == pml.is_inverted
  # Off the diagonal: cdist's gradient at a zero distance is its own choice.
  off = ~np.eye(N, dtype=bool)
  np.testing.assert_allclose(mat[off], theirs.detach().numpy()[off],
                             rtol=1e-4, atol=1e-5)
  if name == "lp" and kwargs.get("p") == 1:
    return  # |x - x| at the diagonal: subgradients differ, values agree
  np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-3, atol=1e-4)


def _masks_from_pairs(a1, p, a2, n, size=N):
  pos, neg = np.zeros((size, size), bool), np.zeros((size, size), bool)
  pos[a1.numpy(), p.numpy()] = True
  neg[a2.numpy(), n.numpy()] = True
  return pos, neg


def _ties_kept(ours, theirs):
  """HDC keeps the pairs at least as hard as its k-th: a self-compared batch
  lists (a, b) and (b, a) with one value, and where the k-th falls between
  them torch.topk keeps one of the two, we both. Returns theirs with such a
  pair completed, where ours has it."""
  return theirs | (ours & theirs.T)


def _triplet_set(t: miners.Triplets):
  """Our Triplets expanded to (N, N, N), in the test only."""
  pos, neg = np.asarray(t.pos), np.asarray(t.neg)
  valid = pos[:, :, None] & neg[:, None, :]
  if t.window is not None:
    for a in range(valid.shape[0]):
      valid[a] &= np.asarray(t.window(a))
  return valid


def _pml_triplet_set(a, p, n, size=N):
  valid = np.zeros((size, size, size), bool)
  valid[a.numpy(), p.numpy(), n.numpy()] = True
  # PML never lists a triplet twice; a set compares them.
  assert valid.sum() == len(a)
  return valid


MINERS = [
    ("multi_similarity", {}, "MultiSimilarityMiner", {}),
    ("multi_similarity", {"epsilon": 0.3}, "MultiSimilarityMiner",
     {"epsilon": 0.3}),
    ("pair_margin", {}, "PairMarginMiner", {}),
    ("pair_margin", {"pos_margin": 0.9, "neg_margin": 0.3,
                     "distance": "cosine"}, "PairMarginMiner",
     {"pos_margin": 0.9, "neg_margin": 0.3}),
    ("batch_hard", {}, "BatchHardMiner", {}),
    ("batch_easy_hard", {}, "BatchEasyHardMiner", {}),
    ("batch_easy_hard", {"pos_strategy": "semihard", "neg_strategy": "hard"},
     "BatchEasyHardMiner", {"pos_strategy": "semihard", "neg_strategy": "hard"}),
    ("batch_easy_hard", {"pos_strategy": "all", "neg_strategy": "easy",
                         "allowed_neg_range": (0.5, 1.5)},
     "BatchEasyHardMiner", {"pos_strategy": "all", "neg_strategy": "easy",
                            "allowed_neg_range": (0.5, 1.5)}),
    ("batch_easy_hard", {"pos_strategy": "hard", "neg_strategy": "all"},
     "BatchEasyHardMiner", {"pos_strategy": "hard", "neg_strategy": "all"}),
] + [("triplet_margin", {"type_of_triplets": kind}, "TripletMarginMiner",
      {"type_of_triplets": kind})
     for kind in ("all", "hard", "semihard", "easy")] + [
    ("triplet_margin", {"type_of_triplets": "semihard", "margin": 0.5,
                        "distance": "cosine"}, "TripletMarginMiner",
     {"type_of_triplets": "semihard", "margin": 0.5}),
    ("batch_hard", {"distance": "cosine"}, "BatchHardMiner", {}),
    ("angular", {}, "AngularMiner", {}),
    ("angular", {"angle": 40}, "AngularMiner", {"angle": 40}),
    ("hdc", {}, "HDCMiner", {}),
    ("hdc", {"filter_percentage": 0.2, "distance": "cosine"}, "HDCMiner",
     {"filter_percentage": 0.2}),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,kwargs,pml_name,pml_kwargs", MINERS)
def test_miner_matches_pml_exactly(seed, name, kwargs, pml_name, pml_kwargs):
  torch, distances, _, pml_miners = import_pml()
  x, labels = random_batch(seed, n=N, dim=DIM)
  bound = compose.make_miner({"name": name, **kwargs})
  if "distance" in kwargs:
    pml_kwargs = {**pml_kwargs, "distance": distances.CosineSimilarity()}
  pml = getattr(pml_miners, pml_name)(**pml_kwargs)
  out = pml(torch.tensor(x), torch.tensor(labels, dtype=torch.long))
  pos, neg = similarity.label_masks(jnp.asarray(labels))
  ours = compose.mine(bound, jnp.asarray(x), pos, neg)
  if len(out) == 4:
    assert isinstance(ours, miners.Pairs)
    want_pos, want_neg = _masks_from_pairs(*out)
    if name == "hdc":  # ties at its k-th value: see _ties_kept
      want_pos = _ties_kept(np.asarray(ours.pos), want_pos)
      want_neg = _ties_kept(np.asarray(ours.neg), want_neg)
    np.testing.assert_array_equal(np.asarray(ours.pos), want_pos)
    np.testing.assert_array_equal(np.asarray(ours.neg), want_neg)
  else:
    assert isinstance(ours, miners.Triplets)
    np.testing.assert_array_equal(_triplet_set(ours), _pml_triplet_set(*out))


def test_pair_counts_are_pml_list_multiplicities():
  torch, _, _, pml_miners = import_pml()
  x, labels = random_batch(3, n=N, dim=DIM)
  bound = compose.make_miner({"name": "triplet_margin"})
  a, p, n = pml_miners.TripletMarginMiner()(torch.tensor(x),
                                            torch.tensor(labels))
  pos, neg = similarity.label_masks(jnp.asarray(labels))
  mined = compose.mine(bound, jnp.asarray(x), pos, neg)
  pos_count, neg_count = miners.pair_counts(mined)
  want_pos, want_neg = np.zeros((N, N)), np.zeros((N, N))
  np.add.at(want_pos, (a.numpy(), p.numpy()), 1)
  np.add.at(want_neg, (a.numpy(), n.numpy()), 1)
  np.testing.assert_array_equal(np.asarray(pos_count), want_pos)
  np.testing.assert_array_equal(np.asarray(neg_count), want_neg)


def _mined(spec, x, labels, key):
  bound = compose.make_miner(spec)
  pos, neg = similarity.label_masks(jnp.asarray(labels))
  return compose.mine(bound, jnp.asarray(x), pos, neg, key)


def _within(observed, expected, draws, sigmas=6.0):
  """Pooled counts against their expectation, binomial noise allowed."""
  p = expected / draws
  std = np.sqrt(draws * p * (1 - p)) + 1e-9
  assert np.all(np.abs(observed - expected) <= sigmas * std + 1.0)


def test_uniform_histogram_draws_per_bin_as_pml():
  torch, _, _, pml_miners = import_pml()
  x, labels = random_batch(0, n=N, dim=DIM)
  kw = {"num_bins": 8, "pos_per_bin": 5, "neg_per_bin": 7}
  a1, _, a2, _ = pml_miners.UniformHistogramMiner(**kw)(
      torch.tensor(x), torch.tensor(labels))
  keys = jax.random.split(jax.random.key(0), 400)
  mined = jax.vmap(lambda k: _mined({"name": "uniform_histogram", **kw}, x,
                                    labels, k))(keys)
  pos_mask, neg_mask = similarity.label_masks(jnp.asarray(labels))
  mat = np.asarray(compose.make_distance("lp").fn(jnp.asarray(x),
                                                  jnp.asarray(x)))
  for counts, keep, per_bin, want in ((mined.pos, pos_mask, 5, len(a1)),
                                      (mined.neg, neg_mask, 7, len(a2))):
    counts, keep = np.asarray(counts), np.asarray(keep)
    # As many draws as PML's (non-empty bins x per_bin), only kept pairs.
    assert np.all(counts.sum(axis=(1, 2)) == want)
    assert not np.any(counts[:, ~keep])
    # Uniform within each bin: every pair of a bin of size s, per_bin / s.
    values = mat[keep]
    edges = np.linspace(values.min(), values.max(), 9)
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, 7)
    sizes = np.bincount(bins, minlength=8)
    expected = len(keys) * per_bin / sizes[bins]
    _within(counts.sum(axis=0)[keep], expected, len(keys) * per_bin)


def test_distance_weighted_draws_by_inverse_density():
  torch, _, _, pml_miners = import_pml()
  x, labels = random_batch(1, n=N, dim=DIM)
  a, _, _ = pml_miners.DistanceWeightedMiner()(torch.tensor(x),
                                               torch.tensor(labels))
  keys = jax.random.split(jax.random.key(1), 300)
  pos_mask, neg_mask = similarity.label_masks(jnp.asarray(labels))
  pos_mask, neg_mask = np.asarray(pos_mask), np.asarray(neg_mask)
  mat = np.asarray(compose.make_distance("lp").fn(jnp.asarray(x),
                                                  jnp.asarray(x)), np.float64)
  # PML's weights: 1 / q(d) on negatives closer than nonzero_loss_cutoff.
  d = np.maximum(mat, 0.5)
  with np.errstate(invalid="ignore", divide="ignore"):
    log_w = (2.0 - DIM) * np.log(d) - ((DIM - 3) / 2) * np.log(1 - d * d / 4)
  w = np.where(neg_mask & (mat < 1.4) & np.isfinite(log_w),
               np.exp(log_w - np.nanmax(np.where(neg_mask, log_w, np.nan))), 0)
  w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)

  def per_key(k):
    t = _mined("distance_weighted", x, labels, k)
    tiles = jax.vmap(lambda i: miners.tile(t, i, t.pos[i], t.neg[i]))(
        jnp.arange(N))
    return tiles  # (N, p, n) counts
  tiles = np.asarray(jax.vmap(per_key)(keys))
  # As many triplets as PML's, per anchor its class size, valid tuples only.
  assert np.all(tiles.sum(axis=(1, 2, 3)) == len(a))
  assert not np.any(tiles.sum(axis=3)[:, ~pos_mask])
  assert not np.any(tiles.sum(axis=2)[:, ~(neg_mask & (w > 0))])
  draws = tiles.sum(axis=(0, 2, 3))  # per anchor, over the keys
  neg_counts = tiles.sum(axis=(0, 2))  # (N, n)
  pos_counts = tiles.sum(axis=(0, 3))  # (N, p)
  for i in np.where(draws > 0)[0]:
    _within(neg_counts[i], draws[i] * w[i], draws[i])
    uniform = pos_mask[i] / pos_mask[i].sum()
    _within(pos_counts[i], draws[i] * uniform, draws[i])


@pytest.mark.parametrize("loss", ["contrastive", "triplet_margin",
                                  "multi_similarity"])
@pytest.mark.parametrize("miner", ["uniform_histogram", "distance_weighted"])
@pytest.mark.compiled
def test_random_miners_take_a_key_under_jit(loss, miner):
  x, labels = random_batch(2, n=N, dim=DIM)
  fn = jax.jit(compose.build(loss, miner=miner))
  v1 = fn(jnp.asarray(x), jnp.asarray(labels), key=jax.random.key(0))
  v2 = fn(jnp.asarray(x), jnp.asarray(labels), key=jax.random.key(0))
  assert np.isfinite(float(v1)) and float(v1) == float(v2)
  with pytest.raises(ValueError, match="key"):
    compose.build(loss, miner=miner)(jnp.asarray(x), jnp.asarray(labels))


def _repeat(counts):
  idx = np.argwhere(counts > 0)
  return np.repeat(idx, counts[counts > 0].astype(int), axis=0)


@pytest.mark.parametrize("loss,pml_loss", [
    ("contrastive", "ContrastiveLoss"), ("ntxent", "NTXentLoss"),
    ("triplet_margin", "TripletMarginLoss"),
    ("multi_similarity", "MultiSimilarityLoss")])
@pytest.mark.parametrize("miner", ["uniform_histogram", "distance_weighted"])
def test_random_miner_tuples_give_pml_loss(loss, pml_loss, miner):
  """The loss of a random miner's draw equals PML's loss of the same draw as
  index lists (repeats included): the counts path."""
  torch, _, pml_losses, _ = import_pml()
  x, labels = random_batch(3, n=N, dim=DIM)
  key = jax.random.key(3)
  ours = float(compose.build(loss, miner=miner)(jnp.asarray(x),
                                                jnp.asarray(labels), key=key))
  mined = _mined(miner, x, labels, key)
  if isinstance(mined, miners.Pairs):
    p = _repeat(np.asarray(mined.pos))
    n = _repeat(np.asarray(mined.neg))
    tuples = tuple(torch.tensor(v) for v in (p[:, 0], p[:, 1], n[:, 0],
                                             n[:, 1]))
  else:
    tiles = np.stack([np.asarray(miners.tile(mined, i, mined.pos[i],
                                             mined.neg[i])) for i in range(N)])
    t = _repeat(tiles)
    tuples = tuple(torch.tensor(t[:, i]) for i in range(3))
  theirs = getattr(pml_losses, pml_loss)()(
      torch.tensor(x), torch.tensor(labels), tuples).item()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
