"""Every piece of losses.build compiles inside one training step on 8
simulated devices, the batch sharded across them, and gives the loss of
the global batch (its pairs and negatives span devices): the sharded
step's loss equals the same losses computed unsharded, op by op."""

import functools

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metricjax import data as data_lib
from metricjax import losses
from metricjax import state as state_lib
from metricjax import step as step_lib
from metricjax.losses import distances
from metricjax.losses import miners
from metricjax.losses import reducers
from metricjax.losses import regularizers
from metricjax.losses import xbm
from loss_harness import random_batch

N, DIM, MEMORY = 32, 8, 48
# Reducers a training step can use (do_nothing returns no scalar; divisor
# needs a loss that supplies one).
TRAINING_REDUCERS = sorted(set(reducers.REGISTRY) - {"do_nothing", "divisor"})
REDUCER_KWARGS = {"threshold": {"low": 0.1},
                  "class_weighted": {"weights": [1.0, 2.0, 0.5, 1.0]},
                  "multiple": {"reducers": {"pos_loss": "sum"}}}


def _pieces():
  """(label, losses.build keywords) for each piece, each on a loss that
  takes it; the memory's case is built apart."""
  cases = [(f"miner={m}", dict(name="contrastive", miner=m))
           for m in sorted(miners.REGISTRY)]
  cases += [(f"distance={d}", dict(name="contrastive", distance=d))
            for d in sorted(distances.REGISTRY)]
  cases += [(f"reducer={r}", dict(name="contrastive", reducer={
      "name": r, **REDUCER_KWARGS.get(r, {})})) for r in TRAINING_REDUCERS]
  # Embedding regularizers on a triplet loss; every regularizer on the
  # class vectors of a loss that has them (sparse_centers needs SoftTriple's
  # centres: tests/losses/test_weight_losses.py).
  cases += [(f"regularizer={r}", dict(name="triplet_margin", regularizer=r))
            for r in sorted(set(regularizers.REGISTRY) - {"sparse_centers"})]
  cases += [(f"weight_regularizer={r}", dict(name="cosface",
                                             weight_regularizer=r))
            for r in sorted(set(regularizers.REGISTRY) - {"sparse_centers"})]
  cases.append(("miner on cosface", dict(name="cosface",
                                         miner="multi_similarity")))
  # The losses only build makes (REGISTRY's: tests/losses/test_registry.py).
  cases += [(f"loss={n}", dict(name=n))
            for n in sorted(set(losses.COMPOSABLE) - set(losses.REGISTRY))]
  cases.append(("triplet_margin_miner", dict(
      name="triplet_margin",
      miner={"name": "triplet_margin", "type_of_triplets": "semihard"})))
  return cases


def _values(fns, memory_fn):
  """(x, labels, memory, key) -> (every piece's loss, the memory's, the
  memory after the batch)."""
  def values(x, labels, memory, key):
    each = jnp.stack([fn(x, labels, key=jax.random.fold_in(key, i))
                      for i, fn in enumerate(fns)])
    value, memory = xbm.xbm_loss(memory_fn, memory, x, labels)
    return each, value, memory
  return values


@pytest.mark.compiled
def test_every_piece_in_a_sharded_training_step():
  assert len(jax.devices()) == 8
  cases = _pieces()
  w = losses.get_loss("cosface").init(jax.random.key(1), num_classes=4,
                                      embedding_dim=DIM)
  fns = []
  for _, c in cases:
    name = c.pop("name")
    fn = losses.build(name, **c)
    # cosface's class vectors, fixed (they are not what this test trains).
    fns.append(functools.partial(fn, **w) if name == "cosface" else fn)
  values = _values(fns, losses.build("contrastive", miner="multi_similarity"))

  def loss(params, loss_params, batch_stats, batch, loss_state, key):
    del loss_params  # metricjax/step.py's contract for a task's loss
    each, value, loss_state = values(batch["x"] @ params["w"], batch["labels"],
                                     loss_state, key)
    return jnp.sum(each) + value, (batch_stats, loss_state)

  x, labels = random_batch(0, n=N, dim=DIM)
  batch = {"x": jnp.asarray(x), "labels": jnp.asarray(labels)}
  params = {"w": jnp.eye(DIM) + 0.1 * jnp.asarray(
      np.random.default_rng(1).normal(size=(DIM, DIM)), jnp.float32)}
  tx = optax.sgd(0.1)
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
      opt_state=tx.init({"model": params, "loss": {}}),
      loss_state=xbm.xbm_init(MEMORY, DIM))
  seed_key = jax.random.key(0)

  mesh = Mesh(jax.devices(), ("data",))
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  train_step = jax.jit(step_lib.make_train_step(lambda rng, d: d, loss, tx))
  new_state, metrics = train_step(state, sharded, seed_key)
  assert bool(metrics["finite"])

  # The same losses on one device.
  key = data_lib.loss_key(data_lib.step_key(seed_key, 0))
  each, value, memory = jax.jit(values)(batch["x"] @ params["w"],
                                        batch["labels"], state.loss_state, key)
  np.testing.assert_allclose(float(metrics["loss"]),
                             float(jnp.sum(each) + value), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new_state.loss_state.embeddings),
                             np.asarray(memory.embeddings), atol=1e-6)
  # Each piece contributed something finite (a piece that silently returned
  # 0 would not show in the sum).
  labelled = dict(zip([label for label, _ in cases], np.asarray(each)))
  assert np.isfinite(np.asarray(each)).all(), labelled
  assert np.sum(np.asarray(each) != 0) >= len(each) - 2, labelled
