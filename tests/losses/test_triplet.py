"""Triplet losses: mined from the batch and on explicit triplets.

Values and gradients are checked against pytorch-metric-learning (and torch's
TripletMarginLoss) where it is installed (those tests skip otherwise).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax.losses import contrastive
from metricjax.losses import triplet
from loss_harness import assert_same
from loss_harness import import_pml
from loss_harness import our_value_and_grad
from loss_harness import pml_value_and_grad
from loss_harness import random_batch


def _pml_distance(distances, distance, normalize):
  if distance == "cosine":
    return distances.CosineSimilarity()
  return distances.LpDistance(normalize_embeddings=normalize,
                              power=2 if distance == "squared_euclidean" else 1)


_DISTANCES = [("euclidean", True), ("euclidean", False),
              ("squared_euclidean", True), ("cosine", True)]


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("distance,normalize", _DISTANCES)
def test_triplet_matches_pml(mining, distance, normalize):
  torch, distances, losses, miners = import_pml()
  x, labels = random_batch(0)
  margin = 0.05 if mining == "all" else 0.2  # semi-hard needs a window
  dist = _pml_distance(distances, distance, normalize)
  miner = {"all": None,
           "hard": miners.BatchHardMiner(distance=dist),
           "semihard": miners.TripletMarginMiner(
               margin=margin, type_of_triplets="semihard", distance=dist),
           }[mining]
  theirs = pml_value_and_grad(torch, losses.TripletMarginLoss(margin=margin,
                                                   distance=dist),
                   x, labels, miner)
  ours = our_value_and_grad(triplet.triplet_margin_loss, x, labels, margin=margin,
               distance=distance, mining=mining, normalize=normalize)
  assert theirs[0] > 0
  assert_same(ours, theirs)


def test_triplet_pml_default():
  torch, _, losses, _ = import_pml()
  x, labels = random_batch(1)
  assert_same(our_value_and_grad(triplet.triplet_margin_loss, x, labels),
               pml_value_and_grad(torch, losses.TripletMarginLoss(), x, labels))


def _brute_triplet(x, labels, margin, semihard):
  """float64 (N, N, N) reference: mean of the positive triplet losses."""
  x = x.astype(np.float64)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  d = np.sqrt(np.maximum(np.sum((x[:, None] - x[None]) ** 2, -1), 0.0))
  same = labels[:, None] == labels[None]
  valid = (same & ~np.eye(len(x), dtype=bool))[:, :, None] & ~same[:, None, :]
  gap = d[:, None, :] - d[:, :, None]  # d(a,n) - d(a,p), indexed [a, p, n]
  loss = margin - gap
  keep = valid & (loss > 0)
  if semihard:
    keep &= gap > 0
  return loss[keep].sum() / max(keep.sum(), 1)


@pytest.mark.parametrize("mining", ["all", "semihard"])
def test_sorted_prefix_matches_float64(mining):
  x, labels = random_batch(11, n=160, dim=32, classes=12)
  value = triplet.triplet_margin_loss(jnp.asarray(x), jnp.asarray(labels),
                                      margin=0.1, mining=mining)
  np.testing.assert_allclose(
      value, _brute_triplet(x, labels, 0.1, mining == "semihard"), rtol=2e-5)


@pytest.mark.parametrize("mining", ["all", "semihard"])
def test_triplet_n1024_memory_is_quadratic(mining):
  n = 1024
  x, labels = random_batch(12, n=n, dim=64, classes=n // 8)
  f = jax.jit(jax.value_and_grad(functools.partial(
      triplet.triplet_margin_loss, margin=0.1, mining=mining)))
  compiled = f.lower(jnp.asarray(x), jnp.asarray(labels)).compile()
  value, grad = compiled(jnp.asarray(x), jnp.asarray(labels))
  assert np.isfinite(value) and value > 0
  assert np.all(np.isfinite(grad))
  memory = compiled.memory_analysis()
  if memory is not None:  # not every backend reports it
    assert memory.temp_size_in_bytes < 64 * n * n * 4


def test_unknown_options_raise():
  x, labels = random_batch(14, n=6)
  with pytest.raises(ValueError, match="mining"):
    triplet.triplet_margin_loss(x, labels, mining="easy")
  with pytest.raises(ValueError, match="distance"):
    contrastive.contrastive_loss(x, labels, distance="manhattan")


def test_explicit_triplet_loss_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  a, p, n = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(3))
  for normalize in (True, False):
    ours = triplet.triplet_loss(a, p, n, margin=0.3, normalize=normalize)
    ta, tp, tn = (torch.tensor(v) for v in (a, p, n))
    if normalize:
      ta, tp, tn = (torch.nn.functional.normalize(v) for v in (ta, tp, tn))
    # eps=0: torch otherwise adds eps inside the distance.
    ref = torch.nn.TripletMarginLoss(margin=0.3, eps=0.0)(ta, tp, tn)
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5)
