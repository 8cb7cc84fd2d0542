"""The training step every task shares: sample a batch, take the loss's
gradient, update parameters and optimiser state.

A task supplies `sample(rng, data) -> batch` and `loss(params, loss_params,
batch_stats, batch, loss_state, key) -> (loss, (new_batch_stats,
new_loss_state))`; the randomness of step s comes from
data.step_key(key(seed), s) (the derivation the streaming paths use too), so
a resumed run draws the same batches; the loss's key (a random miner's) is
data.loss_key of it.
The seed's key is an argument of the step, not a constant of its program:
runs that differ only in their seed share one compiled step.

Every step reports whether its loss and gradients were finite. With
`skip_nonfinite` a non-finite step changes nothing but the step counter (the
next step draws a new batch); without it the training loop stops on it
before any checkpoint of the bad state is written (metricjax/train.py).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from metricjax import data as data_lib
from metricjax.state import trainable
from metricjax.state import TrainState


def all_finite(tree) -> jax.Array:
  """True when every element of every leaf of `tree` is finite."""
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(sample: Callable, loss: Callable,
                    tx: optax.GradientTransformation, *,
                    skip_nonfinite: bool = False) -> Callable:
  """(state, data, seed_key) -> (state, {"loss", "grad_norm", "finite"}), to
  be jitted; seed_key is jax.random.key(config.seed).

  "finite" (bool) is False when the loss or a gradient was NaN or infinite;
  then, with skip_nonfinite, params, batch_stats and optimiser state stay
  those of the input state.
  """
  def train_step(state: TrainState, data, seed_key: jax.Array):
    key = data_lib.step_key(seed_key, state.step)
    batch = sample(key, data)
    objective = lambda p: loss(p["model"], p["loss"], state.batch_stats, batch,
                               state.loss_state, data_lib.loss_key(key))
    params = trainable(state)
    (value, (batch_stats, loss_state)), grads = jax.value_and_grad(
        objective, has_aux=True)(params)
    finite = jnp.isfinite(value) & all_finite(grads)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params["model"],
        loss_params=params["loss"], batch_stats=batch_stats,
        loss_state=loss_state, opt_state=opt_state)
    if skip_nonfinite:
      # Not optax.apply_if_finite, whose semantics differ where it matters
      # here: it wraps the optimiser only, so the batch-norm statistics of
      # the forward pass would still take a NaN batch's; it tests the
      # gradients, not the loss (a NaN loss with finite gradients would
      # pass); it accepts non-finite updates after max_consecutive_errors
      # in a row; and its counters live in opt_state, which changes the
      # checkpoint's tree (older runs would no longer resume), while the
      # count is the host's FiniteGuard's (metrics.jsonl's
      # nonfinite_steps, the checkpoint's meta).
      # An elementwise select, not lax.cond: both branches are already
      # computed, and a select keeps the step one fused program.
      kept = state.replace(step=new_state.step)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                               new_state, kept)
    return new_state, {"loss": value, "grad_norm": optax.tree.norm(grads),
                       "finite": finite}

  return train_step


def repeat_steps(train_step: Callable, num_steps: int, *,
                 streamed: bool) -> Callable:
  """num_steps training steps as one program (fewer dispatches):
  (state, data, seed_key) -> (state, metrics stacked over the steps).

  data is the device-resident dataset every step samples from, or, when
  streamed, a tuple of num_steps batches, one per step. The scan is
  unrolled, which keeps each step's program closest to a separate call's:
  the results are those of num_steps calls up to float32 rounding, which
  the MS miner's thresholds can amplify (tests/test_train.py measured bit
  for bit in some runs, 1e-4 relative on parameters after 7 steps in
  others; a rolled scan gave 6e-4). The price is compile time growing
  with num_steps.
  """
  def one_step(state, data, seed_key):
    state, metrics = train_step(state, data[0] if streamed else data,
                                seed_key)
    return state, jax.tree.map(lambda m: m[None], metrics)

  def scanned(state, data, seed_key):
    if streamed:
      stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *data)
      return jax.lax.scan(lambda s, batch: train_step(s, batch, seed_key),
                          state, stacked, unroll=True)
    return jax.lax.scan(lambda s, _: train_step(s, data, seed_key), state,
                        None, length=num_steps, unroll=True)

  return one_step if num_steps == 1 else scanned
