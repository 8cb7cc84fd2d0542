"""Train state, optimiser and learning-rate schedule."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from metricjax.errors import UserError


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
  # What the loss carries from step to step, not trained: a cross-batch
  # memory's bank (config.loss.memory_size); {} for most losses.
  loss_state: Any = flax.struct.field(default_factory=dict)


@flax.struct.dataclass
class TrainStateWithoutLossState:
  """TrainState as checkpoints written before loss_state (2026-12-08) hold
  it: what metricjax.checkpoint restores them through."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  loss_params: Any = flax.struct.field(default_factory=dict)


def trainable(state: TrainState) -> dict:
  return {"model": state.params, "loss": state.loss_params}


SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up, then cosine decay to 1% of the peak at total_steps;
  config.lr_schedule="constant" (the Reality Check's): the peak after the
  warm-up."""
  lr = config.learning_rate
  warmup = min(config.warmup_steps, config.total_steps - 1)
  kind = config.lr_schedule
  if kind == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
        [warmup]) if warmup else optax.constant_schedule(lr)
  if kind != "cosine":
    raise UserError(f"config.lr_schedule={kind!r}; use one of "
                    f"{', '.join(SCHEDULES)}.")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup,
      decay_steps=config.total_steps, end_value=0.01 * lr)


OPTIMIZERS = ("adamw", "rmsprop")


def _optimizer(config, lr) -> optax.GradientTransformation:
  name = config.optimizer
  if name == "adamw":
    return optax.adamw(lr, weight_decay=config.weight_decay)
  if name == "rmsprop":
    # PyTorch's RMSprop (powerful-benchmarker's, the Reality Check's):
    # coupled L2 weight decay, alpha 0.99, eps 1e-8 outside the root.
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False,
                      momentum=config.momentum or None))
  raise UserError(f"config.optimizer={name!r}; use one of "
                  f"{', '.join(OPTIMIZERS)}.")


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """config.optimizer (AdamW by default) over trainable(state), after
  optional global-norm clipping. The loss's parameters learn at
  config.loss.param_lr_multiplier x the learning rate (proxy losses train
  their proxies ~100x faster), a pretrained trunk (the model's "trunk"
  params) at config.backbone_lr_multiplier x (pytorch-metric-learning's
  separate trunk and embedder optimisers)."""
  schedule = learning_rate_schedule(config)
  multipliers = {"model": 1.0,
                 "trunk": config.backbone_lr_multiplier,
                 "loss": config.loss.param_lr_multiplier}
  if set(multipliers.values()) == {1.0}:
    update = _optimizer(config, schedule)
  else:
    update = optax.multi_transform(
        {k: _optimizer(config, lambda step, m=m: m * schedule(step))
         for k, m in multipliers.items()}, _labels)
  if config.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), update)
  return optax.chain(update)


def _labels(tree: dict) -> dict:
  """"loss" / "trunk" / "model" per leaf of trainable(state)."""
  label = lambda k: lambda subtree: jax.tree.map(lambda _: k, subtree)
  model = {k: label("trunk" if k == "trunk" else "model")(v)
           for k, v in tree["model"].items()}
  return {"model": model, "loss": label("loss")(tree["loss"])}


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               rng: jax.Array, *inputs, loss_params=None, loss_state=None,
               pretrained=None, **kwargs) -> TrainState:
  """Fresh state of a model initialised on example inputs (and the loss's
  initial parameters, and `pretrained` weights); jit or eval_shape it to place it on devices or to get
  shapes."""
  variables = model.init(rng, *inputs, **kwargs)
  if pretrained is not None:  # variables -> variables (a pretrained trunk).
    variables = pretrained(variables)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                     batch_stats=variables.get("batch_stats", {}),
                     opt_state=None, loss_params=loss_params or {},
                     loss_state=loss_state or {})
  return state.replace(opt_state=tx.init(trainable(state)))

