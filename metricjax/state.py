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
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up, then cosine decay to 1% of the peak at total_steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=min(config.warmup_steps, config.total_steps - 1),
      decay_steps=config.total_steps, end_value=0.01 * config.learning_rate)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  parts = []
  if config.get("grad_clip_norm"):
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(learning_rate_schedule(config),
                           weight_decay=config.weight_decay))
  return optax.chain(*parts)


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               rng: jax.Array, *inputs, **kwargs) -> TrainState:
  """Fresh state of a model initialised on example inputs; jit or eval_shape
  it to place it on devices or to get shapes."""
  variables = model.init(rng, *inputs, **kwargs)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params))

