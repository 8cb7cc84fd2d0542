"""The training step every task shares: sample a batch, take the loss's
gradient, update parameters and optimiser state.

A task supplies `sample(rng, data) -> batch` and `loss(params, loss_params,
batch_stats, batch) -> (loss, new_batch_stats)`; the randomness of step s
comes from fold_in(key(seed), s), so a resumed run draws the same batches.
"""

from typing import Callable

import jax
import optax

from metricjax.state import trainable
from metricjax.state import TrainState


def make_train_step(sample: Callable, loss: Callable,
                    tx: optax.GradientTransformation, *, seed: int) -> Callable:
  """(state, data) -> (state, {"loss", "grad_norm"}), to be jitted."""
  seed_key = jax.random.key(seed)

  def train_step(state: TrainState, data):
    batch = sample(jax.random.fold_in(seed_key, state.step), data)
    objective = lambda p: loss(p["model"], p["loss"], state.batch_stats, batch)
    params = trainable(state)
    (value, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(
        params)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params["model"],
        loss_params=params["loss"], batch_stats=batch_stats,
        opt_state=opt_state)
    return new_state, {"loss": value, "grad_norm": optax.tree.norm(grads)}

  return train_step
