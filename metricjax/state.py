"""Train state, optimiser and learning-rate schedule."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. The optimiser sees `trainable(state)`:
  the model's parameters and the loss's learnable ones (proxies, class
  weights; {} for most losses)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  loss_params: Any = flax.struct.field(default_factory=dict)


def trainable(state: TrainState) -> dict:
  return {"model": state.params, "loss": state.loss_params}


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up, then cosine decay to 1% of the peak at total_steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=min(config.warmup_steps, config.total_steps - 1),
      decay_steps=config.total_steps, end_value=0.01 * config.learning_rate)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW over trainable(state), after optional global-norm clipping; the
  loss's parameters at config.loss.param_lr_multiplier x the learning rate
  (proxy losses train their proxies ~100x faster)."""
  schedule = learning_rate_schedule(config)
  adamw = lambda lr: optax.adamw(lr, weight_decay=config.weight_decay)
  multiplier = config.loss.get("param_lr_multiplier", 1.0)
  if multiplier == 1.0:
    update = adamw(schedule)
  else:
    update = optax.multi_transform(
        {"model": adamw(schedule),
         "loss": adamw(lambda step: multiplier * schedule(step))},
        lambda tree: {k: jax.tree.map(lambda _, k=k: k, v)
                      for k, v in tree.items()})
  if config.get("grad_clip_norm"):
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), update)
  return optax.chain(update)


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               rng: jax.Array, *inputs, loss_params=None,
               **kwargs) -> TrainState:
  """Fresh state of a model initialised on example inputs (and the loss's
  initial parameters); jit or eval_shape it to place it on devices or to get
  shapes."""
  variables = model.init(rng, *inputs, **kwargs)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                     batch_stats=variables.get("batch_stats", {}),
                     opt_state=None, loss_params=loss_params or {})
  return state.replace(opt_state=tx.init(trainable(state)))

