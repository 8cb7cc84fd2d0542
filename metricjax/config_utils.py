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

