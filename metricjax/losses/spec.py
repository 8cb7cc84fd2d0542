"""A loss with its miner in one word, as comparisons name their rows:
`contrastive+multi_similarity_miner`, `triplet_margin+triplet_margin_miner:
semihard`, `ms+multi_similarity_miner:epsilon=0.2`.

The miner's options follow it after colons: `key=value` (a Python literal,
or a bare word), or for triplet_margin a bare type_of_triplets (all, hard,
semihard, easy).
"""

import ast
from typing import Any

from metricjax.errors import UserError

_MINER_SUFFIX = "_miner"


def _value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word: a string option


def parse(spec: str) -> tuple[str, dict[str, Any] | None]:
  """(loss name, miner piece or None) of `LOSS[+MINER_miner[:opt...]]`."""
  loss, plus, miner = spec.partition("+")
  if not loss or (plus and not miner):
    raise UserError(f"Loss spec {spec!r}: write LOSS or LOSS+MINER_miner "
                    "(e.g. contrastive+multi_similarity_miner).")
  if not plus:
    return loss, None
  name, *options = miner.split(":")
  if not name.endswith(_MINER_SUFFIX):
    raise UserError(f"Loss spec {spec!r}: the miner after '+' is named with "
                    f"its suffix, {name}{_MINER_SUFFIX} (PML's class name "
                    "in snake case).")
  piece = {"name": name[:-len(_MINER_SUFFIX)]}
  for option in options:
    key, eq, value = option.partition("=")
    if eq:
      piece[key] = _value(value)
    elif piece["name"] == "triplet_margin":
      piece["type_of_triplets"] = option
    else:
      raise UserError(f"Loss spec {spec!r}: miner option {option!r} should "
                      "be key=value (a bare word is triplet_margin's "
                      "type_of_triplets).")
  return loss, piece


def label(name: str, miner: dict[str, Any] | None) -> str:
  """The spec `parse` reads back: `parse(label(*parse(s)))` == `parse(s)`."""
  if miner is None:
    return name
  options = [f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}"
             for k, v in miner.items() if k != "name"]
  return "+".join([name, ":".join([miner["name"] + _MINER_SUFFIX, *options])])


def configure(loss_config, spec: str) -> None:
  """Sets config.loss's name and miner from a spec (a config file's
  `loss=` argument)."""
  loss_config.name, miner = parse(spec)
  if miner is not None:
    loss_config.miner = miner
