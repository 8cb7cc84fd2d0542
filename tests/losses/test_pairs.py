"""What the pair losses share (metricjax.losses.pairs): a reference set other
than the batch, padding masks, degenerate batches, the registry signature."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax.losses import REGISTRY
from metricjax.losses import shadow
from loss_harness import ATOL
from loss_harness import RTOL
from loss_harness import assert_same
from loss_harness import import_pml
from loss_harness import our_value_and_grad
from loss_harness import pml_loss_and_miner
from loss_harness import pml_value_and_grad
from loss_harness import random_batch


@pytest.mark.parametrize("seed", [4, 30])
@pytest.mark.parametrize("name", ["triplet", "contrastive", "ntxent", "ms"])
def test_reference_set_matches_pml(name, seed):
  torch, _, losses, miners = import_pml()
  x, labels = random_batch(seed, n=12)
  r, ref_labels = random_batch(seed + 1, n=20)
  fn = REGISTRY[name].fn
  pml_loss, miner = pml_loss_and_miner(losses, miners, name)
  ours = our_value_and_grad(functools.partial(fn, ref_embeddings=jnp.asarray(r),
                                 ref_labels=jnp.asarray(ref_labels)),
               x, labels)
  theirs = pml_value_and_grad(torch, pml_loss, x, labels, miner,
                   ref_emb=torch.tensor(r),
                   ref_labels=torch.tensor(ref_labels, dtype=torch.long))
  assert theirs[0] > 0
  assert_same(ours, theirs)


@pytest.mark.parametrize("labels", [np.zeros(10, np.int32),
                                    np.arange(10, dtype=np.int32)],
                         ids=["one_class", "all_distinct"])
def test_degenerate_batches(labels):
  torch, _, losses, miners = import_pml()
  x, _ = random_batch(6, n=10)
  cases = [("triplet", {}, losses.TripletMarginLoss(), None),
           ("triplet", {"mining": "hard"}, losses.TripletMarginLoss(),
            miners.BatchHardMiner()),
           ("triplet", {"mining": "semihard"}, losses.TripletMarginLoss(),
            miners.TripletMarginMiner(0.05, type_of_triplets="semihard")),
           ("contrastive", {}, losses.ContrastiveLoss(), None),
           ("ntxent", {}, losses.NTXentLoss(), None)]
  for name, kwargs, pml_loss, miner in cases:
    ours = our_value_and_grad(REGISTRY[name].fn, x, labels, **kwargs)
    assert_same(ours, pml_value_and_grad(torch, pml_loss, x, labels, miner))
    if name != "contrastive":  # it has only positive or only negative pairs
      assert ours[0] == 0.0 and not np.any(ours[1])
  for mining in ("all", "hard", "semihard"):
    value, grad = our_value_and_grad(shadow.shadow_margin_loss, x, labels, mining=mining)
    assert value == 0.0 and not np.any(grad)


@pytest.mark.parametrize("name,kwargs", [
    ("triplet", {}), ("triplet", {"mining": "hard"}),
    ("triplet", {"mining": "semihard", "margin": 0.2}),
    ("shadow", {}), ("shadow", {"mining": "hard"}), ("contrastive", {}),
    ("ntxent", {}), ("ms", {})])
def test_padding_mask(name, kwargs):
  x, labels = random_batch(7, n=20)
  pad = 6
  xp = np.concatenate([x, np.full((pad, x.shape[1]), np.nan, np.float32)])
  xp[-1] = 0.0  # zeros and NaN padding both
  lp = np.concatenate([labels, labels[:pad]])
  mask = jnp.arange(len(xp)) < len(x)
  fn = REGISTRY[name].fn
  value, grad = our_value_and_grad(fn, x, labels, **kwargs)
  value_p, grad_p = our_value_and_grad(functools.partial(fn, mask=mask), xp, lp, **kwargs)
  np.testing.assert_allclose(value_p, value, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(grad_p[:len(x)], grad, rtol=1e-5, atol=1e-7)
  assert np.all(grad_p[len(x):] == 0.0)


def test_registry_signature():
  x, labels = random_batch(13, n=12)
  mask = jnp.arange(12) < 10
  for name in ("triplet", "shadow", "contrastive", "ntxent"):
    loss = REGISTRY[name]
    assert loss.input == "embedding"
    value = jax.jit(functools.partial(loss.fn, mask=mask))(x, labels)
    assert value.shape == () and np.isfinite(value)
