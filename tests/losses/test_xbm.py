"""Cross-batch memory: the ring buffer, and xbm_loss against PML's
CrossBatchMemory over batches that wrap it, around today's losses and
around losses.build's (a loss with a miner)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax import losses as mj_losses
from metricjax.losses import REGISTRY
from metricjax.losses import xbm
from loss_harness import ATOL
from loss_harness import RTOL
from loss_harness import assert_same
from loss_harness import import_pml
from loss_harness import pml_loss_and_miner
from loss_harness import pml_value_and_grad
from loss_harness import random_batch


@pytest.mark.parametrize("name", ["contrastive", "triplet", "ntxent", "ms"])
def test_xbm_matches_pml_over_batches(name):
  torch, _, losses, miners = import_pml()
  pml_loss, miner = pml_loss_and_miner(losses, miners, name)
  dim, memory_size = 8, 40  # three batches of 16 wrap the ring
  memory = losses.CrossBatchMemory(pml_loss, dim, memory_size=memory_size,
                                   miner=miner)
  state = xbm.xbm_init(memory_size, dim)
  step = jax.jit(jax.value_and_grad(
      lambda e, l, s: xbm.xbm_loss(REGISTRY[name].fn, s, e, l), has_aux=True))
  for b in range(3):
    x, labels = random_batch(10 + b, n=16)
    (value, state), grad = step(jnp.asarray(x), jnp.asarray(labels), state)
    theirs = pml_value_and_grad(torch, memory, x, labels)
    assert_same((float(value), np.asarray(grad)), theirs)
    assert int(state.ptr) == memory.queue_idx
  np.testing.assert_array_equal(np.asarray(state.labels),
                                memory.label_memory.numpy())
  np.testing.assert_allclose(np.asarray(state.embeddings),
                             memory.embedding_memory.numpy())


# (build's loss, its miner; PML's loss class, miner class and its kwargs).
COMPOSED = [
    ("contrastive", "multi_similarity", "ContrastiveLoss",
     "MultiSimilarityMiner", {}),
    ("triplet_margin", {"name": "triplet_margin",
                        "type_of_triplets": "semihard"},
     "TripletMarginLoss", "TripletMarginMiner",
     {"type_of_triplets": "semihard"}),
    ("ntxent", "batch_hard", "NTXentLoss", "BatchHardMiner", {}),
    ("multi_similarity", None, "MultiSimilarityLoss", None, {}),
    ("generalized_lifted_structure", "pair_margin",
     "GeneralizedLiftedStructureLoss", "PairMarginMiner", {}),
]


@pytest.mark.eager  # tests/losses/conftest.py
@pytest.mark.parametrize("name, miner, pml_name, pml_miner, miner_kwargs",
                         COMPOSED, ids=[c[0] for c in COMPOSED])
def test_xbm_around_a_built_loss_matches_pml(name, miner, pml_name, pml_miner,
                                             miner_kwargs):
  # The miner sees each anchor's own slot as a positive, removed afterwards,
  # as CrossBatchMemory's remove_self_comparisons does.
  torch, _, losses, miners = import_pml()
  dim, memory_size = 8, 40
  memory = losses.CrossBatchMemory(
      getattr(losses, pml_name)(), dim, memory_size=memory_size,
      miner=pml_miner and getattr(miners, pml_miner)(**miner_kwargs))
  fn = mj_losses.build(name, miner=miner)
  state = xbm.xbm_init(memory_size, dim)
  step = jax.value_and_grad(lambda e, l, s: xbm.xbm_loss(fn, s, e, l),
                            has_aux=True)
  for b in range(4):
    x, labels = random_batch(30 + b, n=16)
    (value, state), grad = step(jnp.asarray(x), jnp.asarray(labels), state)
    assert_same((float(value), np.asarray(grad)),
                pml_value_and_grad(torch, memory, x, labels))


@pytest.mark.parametrize("name", ["triplet", "ms"])
def test_xbm_padding_mask(name):
  dim, memory_size, pad = 8, 32, 5
  fn = functools.partial(xbm.xbm_loss, REGISTRY[name].fn)
  step = jax.jit(jax.value_and_grad(
      lambda e, l, s, m: fn(s, e, l, mask=m), has_aux=True))
  state, state_p = xbm.xbm_init(memory_size, dim), xbm.xbm_init(memory_size,
                                                                 dim)
  for b in range(3):
    x, labels = random_batch(20 + b, n=12)
    (value, state), grad = step(x, labels, state, None)
    xp = np.concatenate([x[:4], np.full((pad, dim), np.nan, np.float32), x[4:]])
    lp = np.concatenate([labels[:4], np.zeros(pad, np.int32), labels[4:]])
    mask = np.ones(len(xp), bool)
    mask[4:4 + pad] = False
    (value_p, state_p), grad_p = step(xp, lp, state_p, mask)
    np.testing.assert_allclose(value_p, value, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(grad_p)[mask], grad, rtol=1e-5,
                               atol=1e-7)
    assert np.all(np.asarray(grad_p)[~mask] == 0.0)
  assert int(state_p.ptr) == int(state.ptr) == 36 % memory_size
  np.testing.assert_array_equal(state_p.valid, state.valid)
  np.testing.assert_array_equal(state_p.embeddings, state.embeddings)
  np.testing.assert_array_equal(state_p.labels, state.labels)


def test_xbm_enqueue_ring_and_stop_gradient():
  state = xbm.xbm_init(5, 2)
  x = jnp.arange(8.0).reshape(4, 2)
  state = xbm.xbm_enqueue(state, x, jnp.arange(4))
  state = xbm.xbm_enqueue(state, x + 100, jnp.arange(4) + 10,
                          mask=jnp.array([True, False, True, True]))
  np.testing.assert_array_equal(state.labels, [12, 13, 2, 3, 10])
  np.testing.assert_array_equal(state.valid, [True] * 5)
  assert int(state.ptr) == 2
  grad = jax.grad(lambda e: jnp.sum(xbm.xbm_enqueue(
      xbm.xbm_init(5, 2), e, jnp.arange(4)).embeddings))(x)
  assert not np.any(grad)
  with pytest.raises(ValueError):
    xbm.xbm_enqueue(xbm.xbm_init(3, 2), x, jnp.arange(4))
