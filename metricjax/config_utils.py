"""Config files: loading them, and parsing their `:key=value,...` argument
(big_vision style)."""

import os

import ml_collections
from ml_collections.config_flags import config_flags

from metricjax.errors import UserError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """"a=1,b=x" -> ConfigDict, typed like `defaults`; unknown keys are errors."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise UserError(
          f"Bad config argument {item!r}: expected key=value with key one of "
          f"{', '.join(sorted(defaults))}.")
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise UserError(f"Config argument {key} wants true or false, got {value!r}.")
      result[key] = value.lower() in ("true", "1")
    else:
      try:
        result[key] = kind(value)
      except ValueError:
        raise UserError(
            f"Config argument {key} wants a {kind.__name__}, got {value!r}.") from None
  return result


def load_config(spec: str) -> ml_collections.ConfigDict:
  """"configs/X.py[:ARGS]" -> get_config(ARGS), loaded as the CLIs'
  --config flag loads it (ml_collections' config-file parser), but unlocked,
  so that a script may add fields before training."""
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    raise UserError(f"Config file {path} does not exist (from {spec!r}).")
  parser = config_flags.ConfigFileFlagParser(name="config", lock_config=False)
  return parser.parse(spec)



def add_shared_fields(config: ml_collections.ConfigDict) -> None:
  """Sets the fields every experiment config shares, once (configs/*.py call
  this first and override what their experiment needs). It lives here, not
  in configs/, because ml_collections loads a config file by its path, so a
  sibling module of it is not importable from every working directory."""
  config.task = "retrieval"  # Or "vse" (metricjax/tasks).
  config.seed = 0
  # Training steps per jitted call (an unrolled lax.scan): fewer dispatches,
  # the same results up to float32 rounding; logs, validation and
  # checkpoints still fall on their steps.
  config.steps_per_call = 1
  # XLA:CPU kernels (metricjax/xla_routing.py): "conv_eigen" takes the
  # convolutions off YNNPACK, whose weight gradient is slow; or
  # "jaxlib_default". Ignored off CPU.
  config.xla_cpu_routing = "conv_eigen"
  # Activations in float32 or bfloat16; parameters, optimiser state,
  # normalisation statistics and loss reductions stay float32.
  config.compute_dtype = "float32"
  # "adamw" or "rmsprop" (momentum used by rmsprop); the pretrained trunk of
  # an EmbeddingNet learns at backbone_lr_multiplier x the learning rate.
  config.optimizer = "adamw"
  config.momentum = 0.0
  config.backbone_lr_multiplier = 1.0
  config.grad_clip_norm = 0.0  # 0 = off.
  # True: a step with a NaN/inf loss or gradient is skipped (counted as
  # nonfinite_steps in metrics.jsonl) instead of stopping the run.
  config.skip_nonfinite_steps = False
